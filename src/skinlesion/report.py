"""A one-page HTML report of one analysed image, for the app's "Download report" button.

Its sentences are the verdict's (:func:`skinlesion.verdict.verdict`), the same the app, the CSV
and the API show.
"""

from __future__ import annotations

import io

NOTICE = (
    "For research and education only. This is not a medical device and its output is not a diagnosis: "
    "see a dermatologist about any skin lesion that worries you."
)


def report_html(predictor, pred, image) -> str:
    """A one-page HTML report of one image: advice, tier, summary, named class, probabilities, set, model version, notice."""
    import base64
    import html

    buf = io.BytesIO()
    thumb = image.copy()
    thumb.thumbnail((400, 400))
    thumb.save(buf, "PNG")
    img64 = base64.b64encode(buf.getvalue()).decode()
    cfg = predictor.config
    v = pred.verdict
    e = html.escape
    rows = "".join(f"<tr><td>{e(v.names[c])} ({c})</td><td>{p:.1%}</td></tr>" for c, p in pred.ranked())
    advice = "".join(f'<p style="background:#ffd;padding:.4em">{e(a)}</p>' for a in v.advice)
    version = (cfg.created_with or {}).get("skinlesion", "?")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>skinlesion report: {e(pred.name)}</title></head>
<body style="font-family:sans-serif;max-width:760px;margin:2em auto">
<h1>Skin lesion analysis: {e(pred.name)}</h1>
<p style="background:#fee;padding:.5em"><b>{e(NOTICE)}</b></p>
{advice}
<h2>{"Triage: " if v.analysed else ""}{e(v.headline)}</h2>
<p>{e(v.reason)}</p>{"" if v.analysed else f"<p>Unreliable analysis, no advice: {e(v.analysis)}</p>"}
<p><b>{e(v.summary)}</b></p>
<img src="data:image/png;base64,{img64}" alt="the analysed image" style="max-width:400px">
<h2>{e(v.names[pred.top])} ({pred.top})</h2>
<p>{e(v.decision)}<br>{e(v.description)}</p>
<p>{e(v.top_three)}<br>{e(v.prediction_set)}<br>
Warnings: {e(" | ".join(pred.warnings) or "none")}</p>
<table border="1" cellpadding="4" style="border-collapse:collapse"><tr><th>diagnosis</th><th>probability</th></tr>{rows}</table>
<p>Model: {e(cfg.name)}, skinlesion {e(str(version))}, bundle {predictor.model_hash}, back end {predictor.backend}.</p>
</body></html>"""
