"""The Streamlit web app: upload lesion photos, see a calibrated, explained analysis.

Started by ``skinlesion app [--model MODEL] [--port N]`` (or ``make app``), which runs
``streamlit run`` on this file. The model loads once per process (``st.cache_resource``)
and is shared by all sessions; :class:`skinlesion.predict.Predictor` is safe for that.

Per image: a result card (top diagnosis and probability, the ranked top three, the conformal
prediction set and the triage tier as a banner), one ranked chart of all seven probabilities,
and on request the Grad-CAM map beside the original. An upload that does not look like
dermoscopy gets no diagnosis unless the user opens "Analyse anyway". Several uploads: the
summary table comes first, then each image in its own expander.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from skinlesion.runtime import passive_waits

passive_waits()  # before torch is imported: no spinning threads beside other sessions and processes

import streamlit as st  # noqa: E402

from skinlesion.report import NOTICE, report_html  # noqa: E402


TIER_STYLE = {"see a dermatologist soon": st.error, "unsure: refer": st.warning, "routine": st.success}


def _arg(flag: str, env: str, default: str | None = None) -> str | None:
    argv = sys.argv[1:]
    if flag in argv and argv.index(flag) + 1 < len(argv):
        return argv[argv.index(flag) + 1]
    return os.environ.get(env, default)


def _model_arg() -> str:
    return _arg("--model", "SKINLESION_MODEL", "default")


def sample_button(model: str, explain: bool, meta: dict | None) -> bool:
    """'Try a sample': analyse a real image (the bundled HAM10000 melanoma, or the one ``skinlesion app --sample``
    names), with its credit and license, and after the analysis its ground truth; True when shown."""
    from skinlesion.sample import load_sample

    sample = load_sample(_arg("--sample", "SKINLESION_SAMPLE"), _arg("--sample-credit", "SKINLESION_SAMPLE_CREDIT"))
    if not sample.path.is_file():
        return False
    if not st.button(f"Try a sample: {sample.path.name}", key="sample"):
        return False
    st.subheader(f"Sample: {sample.path.name}")
    st.caption(f"Sample image: {sample.credit}" + (f". License: {sample.license}." if sample.license else ""))
    if meta is not None and not any(v for v in meta.values()):  # no patient data entered: the sample's own, where known
        meta = {k: sample.patient.get(k) for k in ("age", "sex", "localization")}
    if meta and any(v not in (None, "") for v in meta.values()):  # the patient data changes the result: say which
        st.caption("Analysed with: " + used_patient_data(meta) + ".")
    rows: list = []
    show_result(get_predictor(model), sample.path.name, sample.path.read_bytes(), explain, rows, meta)
    truth = sample.truth()
    if truth:
        st.info(truth)
    if sample.seen_in_training_by and sample.seen_in_training_by == _model_arg():
        st.caption(sample.seen_in_training_note)
    return True


@st.cache_resource(show_spinner=False)
def get_card(model: str):
    """What the first page shows of the model, without loading it (its JSON config and which back end will
    serve): the sidebar's model card and the patient-data form wait for no network or ONNX session."""
    from types import SimpleNamespace

    from safetensors import safe_open

    from skinlesion.bundle import load_config, onnx_for, resolve_model_path

    path = resolve_model_path(model)
    backend = "onnx" if onnx_for(model) is not None else "torch"  # as Predictor(backend="auto") chooses
    cfg = load_config(path, check_backbones=backend == "torch")
    with safe_open(str(path), framework="numpy") as f:
        uses_metadata = bool(cfg.metadata) and "meta.coef" in f.keys()  # as Predictor.uses_metadata
    return SimpleNamespace(config=cfg, backend=backend, labels=cfg.labels, uses_metadata=uses_metadata)


@st.cache_resource(show_spinner="Loading the model ...")
def get_predictor(model: str):
    from skinlesion.predict import Predictor

    return Predictor(model, concurrency=2)  # sessions run at once: a thread each on two cores, none spinning


def sidebar(predictor) -> None:
    """The model card; ``predictor`` is the loaded one or :func:`get_card`'s (config, back end, labels)."""
    cfg = predictor.config
    st.sidebar.header("Model card")
    st.sidebar.markdown(
        f"**Model:** {cfg.name} ({len(cfg.members)} × {cfg.backbone})  \n**Back end:** {predictor.backend}  \n"
        f"**Input:** {cfg.prep.source_size or 'full'} px source, {cfg.prep.input_size} px network input"
    )
    m = cfg.metrics or {}
    keys = [k for k in ("accuracy", "balanced_accuracy", "auc_macro", "ece") if isinstance(m.get(k), (int, float))]
    if keys:  # a markdown table: the first page needs no pandas (1.5 s of a cold start)
        rows = "\n".join(f"| {k} | {float(m[k]):.4f} |" for k in keys)
        st.sidebar.markdown(f"**Metrics ({m.get('evaluated_on', 'validation')})**\n\n| metric | value |\n| --- | --- |\n{rows}")
    labels = predictor.labels
    st.sidebar.markdown(f"**Classes ({labels.name}):** " + ", ".join(f"{d.code} ({d.name})" for d in labels.diagnoses))
    if labels.name == "ham10000":
        st.sidebar.markdown(
            "**Training data:** HAM10000. Mostly fair-skinned patients from Austria and Australia; dermoscopic images only. "
            "Weights licensed CC BY-NC-SA 4.0."
        )
    else:
        st.sidebar.markdown(f"**Training data:** `{(cfg.train or {}).get('data', 'not recorded')}` (see the model card for its license).")
    st.sidebar.caption(NOTICE)


def probability_chart(pred) -> str:
    """The one probability display: every class ranked, a bar and its value (HTML, no chart library)."""
    import html

    rows = []
    for code, p in pred.ranked():
        name = html.escape(f"{pred.verdict.names[code]} ({code})")
        rows.append(
            '<div class="sl-prob" style="display:flex;align-items:center;gap:.5em;margin:.15em 0">'
            f'<span style="flex:0 0 45%">{name}</span>'
            f'<span style="flex:1 1 auto;background:#eee;height:.9em"><span style="display:block;background:#4c78a8;height:.9em;'
            f'width:{100 * p:.1f}%"></span></span>'
            f'<span style="flex:0 0 4.5em;text-align:right">{100 * p:.1f} %</span></div>'
        )
    return "".join(rows)


def result_card(pred, labels) -> None:
    """The verdict's words in order (skinlesion.verdict): tier and why, the malignant summary against the
    tier's threshold, the named class and its decision rule, the top three, the prediction set, and one
    ranked chart of all probabilities with their values."""
    v = pred.verdict
    if v.analysed:
        TIER_STYLE.get(v.tier, st.info)(f"Triage: **{v.headline}**" + (f" ({v.reason})" if v.reason else ""))
    else:  # "Analyse anyway": the verdict stays "not analysed"; the analysis below is marked unreliable
        st.warning(f"**{v.headline}** ({v.reason})")
        st.markdown(f"Unreliable analysis, no advice: {v.analysis}")
    st.markdown(v.summary)
    st.markdown(f"### {v.names[pred.top]} ({pred.top})")
    st.markdown(v.decision)
    st.caption(v.description)
    st.markdown(v.top_three)
    st.markdown(v.prediction_set)
    st.markdown(probability_chart(pred), unsafe_allow_html=True)


def explanation(predictor, image, pred) -> None:
    from skinlesion.explain import colour_scale, overlay

    top3 = [c for c, _ in pred.ranked()[:3]]
    target = st.selectbox("Explain the class", top3, key=f"explain-{pred.name}")
    with st.spinner("Computing the heat map ..."):
        heat = predictor.explain(image, target=predictor.labels.index(target))
    left, right = st.columns(2)
    left.image(image, caption="original", width="stretch")
    right.image(overlay(image, heat), caption=f"Grad-CAM for {target} (LayerCAM; red: most evidence, blue: least)", width="stretch")
    right.image(colour_scale(), caption="colour scale of the heat map (relative to this image's strongest evidence)", width="stretch")


def used_patient_data(meta: dict) -> str:
    """``age 60, male, chest``: the patient data an analysis used (unknown fields left out)."""
    parts = []
    if meta.get("age") not in (None, ""):
        parts.append(f"age {float(meta['age']):g}")
    parts += [str(meta[k]).replace("_", " ") for k in ("sex", "localization") if meta.get(k) not in (None, "", "unknown")]
    return ", ".join(parts) or "no patient data"


def show_result(predictor, name: str, data: bytes, explain: bool, rows: list, meta: dict | None) -> None:
    from skinlesion.errors import SkinLesionError
    from skinlesion.intake import check_upload_name, open_image
    from skinlesion.predict import error_row

    try:
        check_upload_name(name)
        intake = open_image(data, name)
        pred = predictor.predict_images([intake.image], [name], [intake.warnings], [meta or {}])[0]
    except SkinLesionError as exc:
        st.error(f"Could not analyse {name}: {exc}")
        rows.append(error_row(name, str(exc), predictor.labels.codes))
        return
    rows.append(pred.row())
    for w in pred.warnings:
        if not w.startswith("out of distribution"):
            st.warning(w)
    for advice in pred.quality_advice:  # photo quality first; the analysis is still shown below
        st.warning(advice)
    if not pred.verdict.analysed:  # out of distribution: the one verdict (skinlesion.verdict), with the reason that fired
        v = pred.verdict
        st.warning(f"**{v.headline}** ({v.reason}). {v.advice[-1]} No diagnosis is shown.")
        st.image(intake.image, caption=name, width=320)
        with st.expander("Analyse anyway (unreliable)", expanded=False):
            result_card(pred, predictor.labels)
        return
    # the answer first: on a phone the columns stack, and the tier must be on the first screen
    left, right = st.columns([1, 1])
    with right:
        st.image(intake.image, caption=f"{intake.original_size[0]}x{intake.original_size[1]}", width="stretch")
    with left:
        result_card(pred, predictor.labels)
        st.download_button(
            "Download report (HTML)",
            report_html(predictor, pred, intake.image),
            file_name=f"{Path(name).stem}_report.html",
            mime="text/html",
            key=f"report-{name}",
        )
    if explain:
        explanation(predictor, intake.image, pred)


def patient_data(predictor) -> dict | None:
    if not predictor.uses_metadata:
        return None
    from skinlesion.posthoc import LOCALIZATIONS

    with st.expander("Patient data (optional: improves the analysis)"):
        c1, c2, c3 = st.columns(3)
        age = c1.number_input("Age", min_value=0, max_value=120, value=None, step=5)
        sex = c2.selectbox("Sex", ["", "male", "female"])
        site = c3.selectbox("Body site", ["", *LOCALIZATIONS])
    return {"age": age, "sex": sex or None, "localization": site or None}


def main() -> None:
    if "study" in st.query_params:  # a reader's invite link: the reading page (skinlesion.study.app_page)
        from skinlesion.study.app_page import render

        return render(_arg("--study-db", "SKINLESION_STUDY_DB"))
    st.set_page_config(page_title="skinlesion: lesion analysis", page_icon="🔬", layout="wide")
    st.title("Skin lesion analysis")
    st.caption(NOTICE)
    card = get_card(_model_arg())  # the first page loads no model: it is loaded for the first analysis
    sidebar(card)
    meta = patient_data(card)
    # no type=[...]: Streamlit would raise on a crafted name (and drop the uploader); skinlesion.intake refuses it in one sentence
    files = st.file_uploader("Upload dermoscopic images (JPEG or PNG)", accept_multiple_files=True)
    explain = st.toggle("Show Grad-CAM heat map", value=False)
    if not files:
        if not sample_button(_model_arg(), explain, meta):
            st.info("Upload one or several images to analyse them.")
        return
    predictor = get_predictor(_model_arg())
    import pandas as pd

    from skinlesion.predict import row_columns

    rows: list = []
    summary = st.container()
    if len(files) == 1:
        st.subheader(files[0].name)
        show_result(predictor, files[0].name, files[0].getvalue(), explain, rows, meta)
    else:
        for f in files:
            with st.expander(f.name, expanded=False):
                show_result(predictor, f.name, f.getvalue(), explain, rows, meta)
    table = pd.DataFrame(rows).reindex(columns=row_columns(predictor.labels.codes))
    table.insert(1, "model", predictor.config.name)
    table.insert(2, "model_version", (predictor.config.created_with or {}).get("skinlesion"))
    table.insert(3, "model_hash", predictor.model_hash)
    with summary:
        st.subheader("Results")
        st.dataframe(
            table[["image", "tier", "top_class", "probability", "decision_rule", "malignant_probability", "quality", "warnings", "error"]],
            width="stretch",
            hide_index=True,
        )
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        st.download_button("Download results (CSV)", buf.getvalue(), file_name="skinlesion_results.csv", mime="text/csv")


main()
