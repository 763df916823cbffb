"""The study report: known numbers on a synthetic study, equal to a recomputation from answers.csv; the ROC
figure; the ``skinlesion study`` CLI (create on real images with the model's out-of-fold answers)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.study.create import invite
from skinlesion.study.reading import next_case, submit
from skinlesion.study.report import write_report
from skinlesion.study.store import Case, Store

from .conftest import shared
from .study_support import CODES, MALIGNANT, synthetic_study

TRUTH = ["mel", "nv", "bcc", "nv"]


def _read_all(store, sid, token, answer_for):
    """Answer every case the reader is given: ``answer_for(truth, phase) -> (dx, management, confidence)``."""
    with store.session() as s:
        truth = {c.position: c.truth for c in s.query(Case).filter(Case.study_id == sid)}
    while True:
        nxt = next_case(store, sid, token)
        if nxt["done"]:
            return
        dx, mgmt, conf = answer_for(truth[nxt["case"]], nxt["phase"])
        submit(store, sid, token, {"case": nxt["case"], "diagnosis": dx, "management": mgmt, "confidence": conf, "phase": nxt["phase"]})


def test_a_synthetic_study_with_known_answers_gives_known_numbers(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    sid, _ = synthetic_study(store, TRUTH, ["mel", "nv", "nv", "nv"], [0.9, 0.1, 0.3, 0.6])
    (_, _, a), (_, _, b) = invite(store, sid, 2, arm="solo")
    _read_all(store, sid, a, lambda t, _: (t, "excise" if t in MALIGNANT else "reassure", 5))  # always right
    _read_all(store, sid, b, lambda t, _: ("nv", "reassure", 2))  # always "nv", never excises
    rep = write_report(store, sid, tmp_path / "out")
    ra, rb = rep["readers"]["reader 1"]["solo"], rep["readers"]["reader 2"]["solo"]
    assert (ra["accuracy"], ra["balanced_accuracy"], ra["malignant_sensitivity"], ra["malignant_specificity"]) == (1, 1, 1, 1)
    assert ra["accuracy_ci95"] == [1, 1]
    assert rb["accuracy"] == 0.5 and rb["balanced_accuracy"] == pytest.approx(1 / 3)
    assert (rb["melanoma_sensitivity"], rb["melanoma_specificity"], rb["malignant_sensitivity"]) == (0, 1, 0)
    assert rep["pooled"]["solo"]["accuracy"] == 0.75 and rep["pooled"]["solo"]["n_answers"] == 8
    lo, hi = rep["pooled"]["solo"]["accuracy_ci95"]
    assert 0.4 <= lo < 0.75 < hi <= 1.0
    m = rep["model"]  # model: mel, nv, nv, nv; positive (>= 0.5) on cases 1 and 4
    assert m["accuracy"] == 0.75 and m["malignant_sensitivity"] == 0.5 and m["malignant_specificity"] == 0.5
    assert m["melanoma_sensitivity"] == 1 and m["melanoma_specificity"] == pytest.approx(2 / 3)
    assert rep["fleiss_kappa"]["solo"] == {"kappa": pytest.approx(-3 / 13), "n_cases": 4, "n_readers": 2}
    csv = pd.read_csv(tmp_path / "out" / "answers.csv")
    assert list(csv.columns[:9]) == ["reader", "case", "image_id", "truth", "diagnosis", "management", "confidence", "arm", "phase"]
    assert len(csv) == 8 and set(csv["image_id"]) == {f"IMG_{k:04d}" for k in range(4)}


def _recompute(rows: pd.DataFrame) -> dict:
    """Accuracy, balanced accuracy and management sensitivity/specificity, computed directly from CSV rows."""
    from sklearn.metrics import balanced_accuracy_score

    exc = rows["management"] == "excise"
    mal, mel = rows["truth"].isin(MALIGNANT), rows["truth"] == "mel"
    return {
        "accuracy": (rows["diagnosis"] == rows["truth"]).mean(),
        "balanced_accuracy": balanced_accuracy_score(rows["truth"], rows["diagnosis"]),
        "melanoma_sensitivity": exc[mel].mean(),
        "melanoma_specificity": (~exc[~mel]).mean(),
        "malignant_sensitivity": exc[mal].mean(),
        "malignant_specificity": (~exc[~mal]).mean(),
    }


def test_report_numbers_equal_a_recomputation_from_the_answers_csv(tmp_path):
    import warnings

    rng = np.random.default_rng(3)
    truths = list(rng.choice(CODES, 30))
    store = Store(tmp_path / "s.sqlite")
    sid, _ = synthetic_study(store, truths, list(rng.choice(CODES, 30)), list(rng.random(30)), arms=("solo", "assisted"))
    readers = invite(store, sid, 5)
    assert [arm for _, arm, _ in readers] == ["solo", "assisted", "solo", "assisted", "solo"]  # arms alternate
    for k, (_, _, tok) in enumerate(readers):
        skill = 0.3 + 0.15 * k
        _read_all(
            store,
            sid,
            tok,
            lambda t, phase: (
                t if rng.random() < skill + (0.2 if phase == "assisted" else 0) else str(rng.choice(CODES)),
                str(rng.choice(["excise", "follow up", "reassure"])),
                int(rng.integers(1, 6)),
            ),
        )
    rep = write_report(store, sid, tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "answers.csv")
    assert len(csv) == 30 * 5 + 30 * 2 and not csv.duplicated(["reader", "case", "phase"]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for (reader, phase), rows in csv.groupby(["reader", "phase"]):
            got = rep["readers"][reader][phase]
            for k, v in _recompute(rows).items():
                assert got[k] == pytest.approx(v), (reader, phase, k)
                assert got[f"{k}_ci95"][0] <= got[k] <= got[f"{k}_ci95"][1]
        for phase, rows in csv.groupby("phase"):
            for k, v in _recompute(rows).items():
                if k != "balanced_accuracy":  # pooled balanced accuracy: the mean of per-class recalls over all answers
                    assert rep["pooled"][phase][k] == pytest.approx(v), (phase, k)
            assert rep["pooled"][phase]["balanced_accuracy"] == pytest.approx(_recompute(rows)["balanced_accuracy"])
    assert rep["fleiss_kappa"]["solo"]["n_readers"] == 5 and rep["fleiss_kappa"]["assisted"]["n_readers"] == 2


def test_the_roc_figure_is_drawn_with_reader_points(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    sid, _ = synthetic_study(store, TRUTH * 3, ["mel", "nv", "nv", "nv"] * 3, list(np.linspace(0.05, 0.95, 12)), arms=("assisted",))
    ((_, _, tok),) = invite(store, sid, 1)
    _read_all(store, sid, tok, lambda t, phase: (t, "excise" if phase == "assisted" or t == "mel" else "reassure", 3))
    write_report(store, sid, tmp_path / "out")
    img = np.asarray(Image.open(tmp_path / "out" / "roc.png").convert("RGB")).astype(int)
    assert img.shape == (720, 720, 3)

    def has(colour):  # matplotlib's tab:blue (solo point) and tab:orange (assisted point)
        return (np.abs(img - np.array(colour)).sum(axis=2) < 30).sum() > 20

    assert has((31, 119, 180)) and has((255, 127, 14))


def test_report_of_a_study_without_answers_is_refused(tmp_path, run_cli):
    db = tmp_path / "s.sqlite"
    sid, _ = synthetic_study(Store(db), TRUTH, TRUTH, [0.1] * 4)
    code, _, err = run_cli("study", "report", "--db", db, "--study", sid, "--out", tmp_path / "out")
    assert code == 2 and "no locked answers yet" in err
    code, _, err = run_cli("study", "report", "--db", db, "--study", "nosuch", "--out", tmp_path / "out")
    assert code == 2 and "No study 'nosuch'" in err
    code, _, err = run_cli("study", "invite", "--db", db, "--study", sid, "--readers", "2", "--arm", "assisted")
    assert code == 2 and "not an arm of study" in err


@pytest.mark.slow
def test_cli_create_invite_report_on_real_images_uses_the_oof_answers(tmp_path, run_cli):
    from skinlesion.bundle import load_config, resolve_model_path
    from skinlesion.card import oof_probabilities
    from skinlesion.data import load_dataset
    from skinlesion.predict import read_aux

    data = shared("dermamnist28")
    db = tmp_path / "study.sqlite"
    code, out, err = run_cli("study", "create", data, "--model", "default", "--cases", "14", "--seed", "1", "--db", db)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("study: ") and lines[1].startswith("admin key: ")
    sid = lines[0].split(": ")[1]
    assert "14 of 14 model answers are out-of-fold predictions" in err
    store = Store(db)
    with store.session() as s:
        cases = s.query(Case).filter(Case.study_id == sid).order_by(Case.position).all()
    assert len(cases) == 14 and {c.truth for c in cases} == set(CODES)  # class-stratified: every diagnosis, 2 each
    assert all(sum(c.truth == d for c in cases) == 2 for d in CODES)
    path = resolve_model_path("default")
    oof = oof_probabilities(load_config(path, check_backbones=False), read_aux(path))
    row = {v: i for i, v in enumerate(load_dataset(data).meta["image_id"])}
    for c in cases:  # the model's answer is exactly its stored out-of-fold probability
        assert [c.model_probs[k] for k in CODES] == pytest.approx(list(oof[row[c.image_id]]))
    code, out, _ = run_cli("study", "invite", "--db", db, "--study", sid, "--readers", "3")
    tokens = out.split()
    assert code == 0 and len(tokens) == 3 and len(set(tokens)) == 3
    _read_all(store, sid, tokens[0], lambda t, _: (t, "reassure", 4))
    code, out, err = run_cli("study", "report", "--db", db, "--study", sid, "--out", tmp_path / "rep")
    assert code == 0, err
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["readers"]["reader 1"]["solo"]["accuracy"] == 1.0 and rep["model"]["sources"] == {"out-of-fold": 14}
    code, _, err = run_cli("study", "create", data, "--cases", "3", "--db", db, "--arms", "solo,peer")
    assert code == 2 and "--arms 'solo,peer' must list solo and/or assisted" in err


@pytest.mark.slow
def test_images_the_model_never_saw_get_fresh_predictions_even_under_a_training_image_id(tmp_path, run_cli):
    """Synthetic images are numbered like HAM10000 (ISIC_0024306...): the ids of training images, other pictures."""
    from skinlesion.data import load_dataset
    from skinlesion.data.synthetic import write_synthetic
    from skinlesion.predict import Predictor

    shared("dermamnist28")  # the model's training data, to tell its images from namesakes
    data = write_synthetic(tmp_path / "synth", n_lesions=10, layout="flat", size=(64, 48), seed=2)
    db = tmp_path / "study.sqlite"
    code, out, err = run_cli("study", "create", data, "--cases", "2", "--seed", "3", "--db", db, "--arms", "solo,assisted")
    assert code == 0, err
    assert "0 of 2 model answers are out-of-fold predictions" in err and "share a training image's id but not its picture" in err
    sid = out.split()[1]
    ds = load_dataset(data)
    p = Predictor("default")
    with Store(db).session() as s:
        cases = s.query(Case).filter(Case.study_id == sid).all()
    for c in cases:
        i = int(np.flatnonzero(ds.meta["image_id"] == c.image_id)[0])
        meta = {k: ds.meta[k].iloc[i] for k in ("age", "sex", "localization")}
        want = p.predict_images([ds.image(i)], [c.image_id], meta=[meta])[0]
        assert c.model_source == "fresh" and c.model_top == want.top
        assert [c.model_probs[k] for k in CODES] == pytest.approx([want.probabilities[k] for k in CODES])
        assert Image.open(__import__("io").BytesIO(c.heatmap)).size == ds.image(i).size  # the assisted arm's heat map
