"""The Streamlit web app: upload lesion photos, see a calibrated, explained analysis.

Started by ``skinlesion app [--model MODEL] [--port N]`` (or ``make app``), which runs
``streamlit run`` on this file. The model loads once per process (``st.cache_resource``)
and is shared by all sessions.
"""

from __future__ import annotations

import io
import os
import sys

import streamlit as st

NOTICE = ("For research and education only. This is not a medical device and its output is not a diagnosis: "
          "see a dermatologist about any skin lesion that worries you.")


def _model_arg() -> str:
    argv = sys.argv[1:]
    if "--model" in argv and argv.index("--model") + 1 < len(argv):
        return argv[argv.index("--model") + 1]
    return os.environ.get("SKINLESION_MODEL", "default")


@st.cache_resource(show_spinner="Loading the model ...")
def get_predictor(model: str):
    from skinlesion.predict import Predictor

    return Predictor(model)


def sidebar(predictor) -> None:
    cfg = predictor.config
    st.sidebar.header("Model card")
    st.sidebar.markdown(
        f"**Backbone:** {cfg.backbone}  \n**Back end:** {predictor.backend}  \n"
        f"**Input:** {cfg.prep.source_size or 'full'} px source, {cfg.prep.input_size} px network input  \n"
        f"**Temperature:** {cfg.temperature:.3f}"
    )
    m = cfg.metrics or {}
    if m:
        st.sidebar.markdown("**Validation metrics**")
        import pandas as pd

        keys = [k for k in ("accuracy", "balanced_accuracy", "auc_macro", "ece") if k in m]
        st.sidebar.table(pd.DataFrame({"value": [f"{float(m[k]):.4f}" for k in keys]}, index=keys))
    data = (cfg.train or {}).get("data", "")
    st.sidebar.markdown(
        f"**Training data:** HAM10000 (DermaMNIST {cfg.prep.source_size or ''} px){' - ' + os.path.basename(str(data)) if data else ''}. "
        "Mostly fair-skinned patients from Austria and Australia; dermoscopic images only. "
        "Weights licensed CC BY-NC-SA 4.0."
    )
    st.sidebar.caption(NOTICE)


def show_result(predictor, name: str, data: bytes, explain: bool, rows: list) -> None:
    from skinlesion.classes import DIAGNOSES
    from skinlesion.errors import SkinLesionError
    from skinlesion.intake import open_image

    st.subheader(name)
    try:
        intake = open_image(data, name)
    except SkinLesionError as exc:
        st.error(f"Could not analyse {name}: {exc}")
        rows.append({"image": name, "error": str(exc)})
        return
    pred = predictor.predict_images([intake.image], [name], [intake.warnings])[0]
    for w in pred.warnings:
        st.warning(w)
    left, right = st.columns([1, 1])
    with left:
        if explain:
            from skinlesion.explain import overlay

            heat = predictor.explain(intake.image, target=[d.code for d in DIAGNOSES].index(pred.top))
            st.image(overlay(intake.image, heat), caption=f"Grad-CAM for {pred.top}", width="stretch")
        else:
            st.image(intake.image, caption=f"{intake.original_size[0]}x{intake.original_size[1]}", width="stretch")
    with right:
        d = pred.diagnosis
        st.markdown(f"### {d.name} ({d.code})")
        st.markdown(f"Calibrated probability: **{pred.top_probability:.1%}**")
        st.caption(d.description)
        label = "malignant or pre-malignant" if pred.malignant_probability >= 0.5 else "benign"
        st.markdown(f"Malignant/benign summary: **{label}** (probability malignant or pre-malignant: "
                    f"{pred.malignant_probability:.1%})")
        import pandas as pd

        chart = pd.DataFrame({"probability": list(pred.probabilities.values())}, index=list(pred.probabilities))
        st.bar_chart(chart, horizontal=True)
        st.table(pd.DataFrame({"diagnosis": [x.name for x in DIAGNOSES],
                               "probability": [f"{pred.probabilities[x.code]:.1%}" for x in DIAGNOSES]},
                              index=[x.code for x in DIAGNOSES]))
    rows.append(pred.row())


def main() -> None:
    st.set_page_config(page_title="skinlesion", layout="wide")
    st.title("Skin lesion analysis")
    st.warning(NOTICE)
    predictor = get_predictor(_model_arg())
    sidebar(predictor)
    files = st.file_uploader("Upload dermoscopic images (JPEG or PNG)", type=["jpg", "jpeg", "png"],
                             accept_multiple_files=True)
    explain = st.toggle("Show Grad-CAM heat map", value=False)
    if not files:
        st.info("Upload one or several images to analyse them.")
        return
    rows: list = []
    for f in files:
        show_result(predictor, f.name, f.getvalue(), explain, rows)
        st.divider()
    import pandas as pd

    table = pd.DataFrame(rows)
    st.subheader("Results")
    st.dataframe(table, width="stretch")
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    st.download_button("Download results (CSV)", buf.getvalue(), file_name="skinlesion_results.csv", mime="text/csv")


main()
