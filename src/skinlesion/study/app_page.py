"""The reading page of the Streamlit app: ``http://APP/?study=ID&token=TOKEN`` (``skinlesion study invite --link``).

The app opens it instead of the analysis page when the link carries ``study``; the database is the one the
app was started with (``skinlesion app --study-db URL``, or ``SKINLESION_STUDY_DB``). Per case: the image, then a diagnosis from
the model's label set, a management choice and a confidence 1-5, locked with one button. In the assisted arm
the model's probabilities, tier and heat map follow the locked solo answer, and the reader may revise. Every
answer is written to the database as it is locked (:mod:`skinlesion.study.reading`), so closing the browser
and opening the link again goes on where the reader stopped; the page keeps nothing of its own but the
result of the last answer, to show it. In an education study the reader sees the truth after each case and
their running score against the model's.
"""

from __future__ import annotations

import base64

import streamlit as st

from ..classes import get
from .reading import StudyRefusal, next_case, submit

MANAGEMENT_HELP = "excise: remove (or biopsy) now; follow up: see it again; reassure: nothing to do"


@st.cache_resource(show_spinner=False)
def _store(db: str):
    from .store import Store

    return Store(db)


def _name(code: str) -> str:
    try:
        return f"{get(code).name} ({code})"
    except Exception:
        return code


def _score_line(score: dict) -> str:
    n = score["cases"]
    return f"Your running score: {score['you_correct']} of {n} correct; the model's on the same cases: {score['model_correct']} of {n}."


def _model_answer(model: dict) -> None:
    st.subheader("The model's answer")
    ranked = sorted(model["probabilities"].items(), key=lambda kv: -kv[1])
    st.markdown("\n".join(f"- {_name(c)}: {100 * p:.1f} %" for c, p in ranked))
    st.markdown(f"Malignant probability {100 * model['malignant_probability']:.1f} %; tier: **{model['tier'] or 'n/a'}**")
    if model.get("heatmap"):
        st.image(base64.b64decode(model["heatmap"]), caption="Grad-CAM heat map (red: most evidence)", width=320, output_format="PNG")


def render(db: str | None) -> None:
    st.set_page_config(page_title="skinlesion: reader study", page_icon="🔬", layout="centered")
    study_id, token = st.query_params.get("study"), st.query_params.get("token")
    st.title("Reader study")
    if not db:
        st.error("This app was started without a study database; start it with skinlesion app --study-db URL.")
        return
    try:
        store = _store(db)
        case = next_case(store, str(study_id), token)
    except StudyRefusal as exc:
        st.error(str(exc))
        return
    except Exception as exc:  # the database failed: one sentence, never a traceback
        st.error(f"The study database cannot be read now ({exc}); reload the page in a moment.")
        return
    prog = case["progress"]
    st.progress(prog["finished"] / max(1, prog["total"]), text=f"{prog['finished']} of {prog['total']} cases finished")
    last = st.session_state.get("study_last")
    if last and last.get("truth"):
        verdict = "right" if last["your_diagnosis"] == last["truth"] else "not right"
        st.info(
            f"Case {last['case']}: the diagnosis was {_name(last['truth'])}; you were {verdict}; the model said {_name(last['model_diagnosis'])}."
        )
    if case.get("score"):
        st.caption(_score_line(case["score"]))
    if case["done"]:
        st.success("You have read every case of this study. Thank you.")
        return
    phase = case["phase"]
    st.subheader(f"Case {case['case']}" + (": your revision, with the model's answer" if phase == "assisted" else ""))
    st.image(base64.b64decode(case["image"]), width=320, output_format="PNG")  # as stored: Streamlit would send a q90 JPEG
    if phase == "assisted":
        solo = case["solo_answer"]
        st.markdown(f"Your locked answer: {_name(solo['diagnosis'])}, {solo['management']}, confidence {solo['confidence']}.")
        _model_answer(case["model"])
    with st.form(key=f"answer-{case['case']}-{phase}"):
        dx = st.radio("Diagnosis", case["diagnoses"], index=None, format_func=_name)
        mgmt = st.radio("Management", case["management"], index=None, horizontal=True, help=MANAGEMENT_HELP)
        conf = st.select_slider("Confidence (1: a guess, 5: certain)", options=[1, 2, 3, 4, 5], value=3)
        sent = st.form_submit_button("Lock the revised answer" if phase == "assisted" else "Lock answer")
    if not sent:
        return
    if dx is None or mgmt is None:
        st.warning("Choose a diagnosis and a management before locking the answer.")
        return
    try:
        result = submit(
            store, str(study_id), token, {"case": case["case"], "diagnosis": dx, "management": mgmt, "confidence": conf, "phase": phase}
        )
    except StudyRefusal as exc:
        st.error(str(exc))
        return
    st.session_state["study_last"] = {**result, "your_diagnosis": dx}
    st.rerun()
