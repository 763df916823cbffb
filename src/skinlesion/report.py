"""A one-page HTML report of one analysed image, for the app's "Download report" button."""

from __future__ import annotations

import io

NOTICE = (
    "For research and education only. This is not a medical device and its output is not a diagnosis: "
    "see a dermatologist about any skin lesion that worries you."
)


def report_html(predictor, pred, image) -> str:
    """A one-page HTML report of one image: the image, probabilities, set, tier, model version and the notice."""
    import base64
    import html

    from .classes import get

    buf = io.BytesIO()
    thumb = image.copy()
    thumb.thumbnail((400, 400))
    thumb.save(buf, "PNG")
    img64 = base64.b64encode(buf.getvalue()).decode()
    cfg = predictor.config
    rows = "".join(f"<tr><td>{html.escape(get(c).name)} ({c})</td><td>{p:.1%}</td></tr>" for c, p in pred.ranked())
    version = (cfg.created_with or {}).get("skinlesion", "?")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>skinlesion report: {html.escape(pred.name)}</title></head>
<body style="font-family:sans-serif;max-width:760px;margin:2em auto">
<h1>Skin lesion analysis: {html.escape(pred.name)}</h1>
<p style="background:#fee;padding:.5em"><b>{html.escape(NOTICE)}</b></p>
<img src="data:image/png;base64,{img64}" alt="the analysed image" style="max-width:400px">
<h2>{html.escape(pred.diagnosis.name)} ({pred.top}): {pred.top_probability:.1%}</h2>
<p>Triage: <b>{html.escape(pred.tier or "n/a")}</b>{(" (" + html.escape(pred.refer_reason) + ")") if pred.refer_reason else ""}<br>
Prediction set (90 %): {html.escape(", ".join(get(c).name for c in pred.prediction_set) or "n/a")}<br>
Malignant or pre-malignant probability: {pred.malignant_probability:.1%}<br>
Warnings: {html.escape(" | ".join(pred.warnings) or "none")}</p>
<table border="1" cellpadding="4" style="border-collapse:collapse"><tr><th>diagnosis</th><th>probability</th></tr>{rows}</table>
<p>Model: {html.escape(cfg.name)}, skinlesion {html.escape(str(version))}, bundle {predictor.model_hash}, back end {predictor.backend}.</p>
</body></html>"""
