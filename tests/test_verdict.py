"""One verdict (issue 17): the tier, the malignant summary, the named class and its description agree in every
view; the decision rule is a stored, switchable part of the model, applied identically everywhere; subgroups."""

from __future__ import annotations

import json
import shutil
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.classes import CODES, HAM10000

APP = str(resources.files("skinlesion") / "app.py")
REASSURING = ("benign", "harmless", "routine")


def _pred(probs, *, tier, refer_reason="", prediction_set=(), top=None, ood=False):
    from skinlesion.predict import Prediction

    probs = dict(zip(CODES, probs))
    top = top or max(probs, key=probs.get)
    mal = sum(p for c, p in probs.items() if HAM10000.get(c).malignant)
    return Prediction(
        name="x.jpg",
        probabilities=probs,
        top=top,
        top_probability=probs[top],
        malignant_probability=mal,
        tier=tier,
        refer=bool(refer_reason),
        refer_reason=refer_reason,
        prediction_set=list(prediction_set),
        out_of_distribution=ood,
    )


def _cfg(threshold=0.129):
    from skinlesion.bundle import Member, ModelConfig

    return ModelConfig(
        preprocess={"input_size": 32},
        members=[Member("resnet18")],
        tier={"malignant_threshold": threshold},
        conformal={"confidence": 0.9},
    )


# ---- the tier and the words ----------------------------------------------------------------


def test_a_malignant_probability_at_the_threshold_is_soon_even_when_unsure():
    from skinlesion.posthoc import TIER_REFER, TIER_ROUTINE, TIER_SOON, analyse

    cfg = _cfg(0.2)
    cfg.refer = {"confidence_threshold": 0.55}
    unsure_but_malignant = [0.10, 0.05, 0.15, 0.0, 0.25, 0.44, 0.01]  # top nv 0.44 < 0.55, malignant 0.40 >= 0.2
    unsure_benign = [0.0, 0.0, 0.45, 0.0, 0.05, 0.50, 0.0]  # malignant 0.05
    sure_benign = [0.0, 0.0, 0.02, 0.0, 0.03, 0.95, 0.0]
    r = analyse(np.array([unsure_but_malignant, unsure_benign, sure_benign]), cfg, {}, ood_flags=[False, False, False])
    assert r[0]["tier"] == TIER_SOON and r[0]["refer"] and "confidence 0.44 < 0.55" in r[0]["refer_reason"]
    assert r[1]["tier"] == TIER_REFER
    assert r[2]["tier"] == TIER_ROUTINE


def test_the_words_of_a_benign_top_class_above_the_soon_threshold_never_reassure():
    from skinlesion.verdict import verdict

    p = _pred([0.097, 0.025, 0.195, 0.004, 0.236, 0.443, 0.0], tier="see a dermatologist soon", refer_reason="confidence 0.44 < 0.55")
    v = verdict(p, _cfg(0.129))
    assert v.headline == "See a dermatologist soon" and "also unsure: confidence 0.44 < 0.55" in v.reason
    assert v.summary == "Malignant or pre-malignant (akiec, bcc, mel): 35.8 %, above the 12.9 % at which it advises a dermatologist soon."
    assert "Melanocytic nevus (nv)" in v.decision and "most probable" in v.decision
    text = " ".join(v.lines()).lower()
    assert not any(w in text for w in REASSURING), text
    assert v.description == HAM10000.get("nv").neutral


def test_the_summary_below_the_threshold_is_stated_against_it_and_routine_may_reassure():
    from skinlesion.verdict import verdict

    v = verdict(_pred([0.0, 0.0, 0.02, 0.0, 0.03, 0.95, 0.0], tier="routine"), _cfg(0.129))
    assert v.summary.endswith("3.0 %, below the 12.9 % at which it advises a dermatologist soon.")
    assert "benign" not in v.summary.lower()
    assert v.description == HAM10000.get("nv").description  # the plain words, "harmless", only when routine
    refer = verdict(_pred([0.0, 0.0, 0.45, 0.0, 0.05, 0.5, 0.0], tier="unsure: refer", refer_reason="confidence 0.50 < 0.55"), _cfg())
    assert refer.headline.startswith("Unsure") and refer.reason == "confidence 0.50 < 0.55"
    assert "harmless" not in refer.description.lower()


# ---- a bundle whose benign top class sits above the soon threshold, in the CSV, report and app ----


def _tiny_bundle_with(run, folder, **changes):
    """A copy of the tiny run's best model in ``folder`` with config fields changed; returns its .safetensors path."""
    from skinlesion.bundle import update_config

    for suffix in (".safetensors", ".json"):
        shutil.copy(run / f"best{suffix}", folder / f"model{suffix}")
    update_config(folder / "model.safetensors", **changes)
    return folder / "model.safetensors"


@pytest.fixture(scope="module")
def alarming(tiny_run, tmp_path_factory):
    """The tiny run's model with its "soon" threshold lowered to 1 %: an image with a benign top class is then 'soon'."""
    from skinlesion.predict import Predictor

    data, _, run = tiny_run
    tier = json.loads((run / "best.json").read_text())["tier"]
    model = _tiny_bundle_with(run, tmp_path_factory.mktemp("alarming"), tier={**tier, "malignant_threshold": 0.01})
    p = Predictor(model, backend="torch")
    for path in sorted((data / "images").glob("*.jpg")):
        pred = p.predict(path)
        if not HAM10000.get(pred.top).malignant and pred.malignant_probability >= 0.01:
            return model, path, pred
    pytest.fail("no image with a benign top class in the tiny dataset")


def test_predict_csv_says_soon_and_never_benign_for_it(alarming, run_cli, tmp_path):
    model, image, pred = alarming
    assert pred.tier == "see a dermatologist soon"
    code, out, err = run_cli("predict", model, image, "--out", tmp_path / "p.csv")
    assert code == 0, err
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert row["tier"] == "see a dermatologist soon" and row["verdict"].startswith("See a dermatologist soon")
    assert "above the 1.0 % at which it advises a dermatologist soon" in row["summary"]
    assert row["decision_rule"] == "most-probable" and not HAM10000.get(row["top_class"]).malignant
    words = " ".join(str(row[c]) for c in ("tier", "verdict", "summary", "refer_reason", "quality_advice")).lower()
    assert not any(w in words for w in REASSURING), words


def test_report_says_soon_and_never_benign_for_it(alarming):
    from skinlesion.predict import Predictor
    from skinlesion.report import report_html

    model, image, pred = alarming
    p = Predictor(model, backend="torch")
    html = report_html(p, pred, Image.open(image).convert("RGB"))
    assert "Triage: See a dermatologist soon" in html and pred.verdict.summary in html
    body = html.lower().split("</h1>", 1)[1]
    assert not any(w in body for w in ("benign", "harmless", "routine")), body


def test_app_says_soon_and_never_benign_for_it(alarming, monkeypatch):
    from streamlit.testing.v1 import AppTest

    model, image, pred = alarming
    monkeypatch.setenv("SKINLESION_MODEL", str(model))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.file_uploader[0].set_value((image.name, image.read_bytes(), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    banner = " ".join(str(e.value) for e in at.error)  # "soon" is shown as an error banner
    assert "Triage: **See a dermatologist soon**" in banner
    shown = [str(m.value) for m in at.main.markdown] + [str(c.value) for c in at.main.caption]  # the result, not the sidebar's model card
    card = " ".join(shown).lower()
    assert pred.verdict.summary.lower() in card
    assert not any(w in card for w in ("benign", "harmless")), card
    assert not at.table  # one probability display: the ranked chart with values, no table beside it
    chart = next(m for m in shown if 'class="sl-prob"' in m)
    assert chart.count('class="sl-prob"') == len(CODES) and all(f"({c})" in chart for c in CODES)


# ---- decision rules --------------------------------------------------------------------------


def _imbalanced(n=6000, seed=0):
    """Calibrated probabilities of a 7-class problem with nv two thirds of the labels and weak rare classes."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02])
    y = rng.choice(7, n, p=prior)
    z = rng.normal(0, 1, (n, 7)) + 1.2 * np.eye(7)[y] + np.log(prior)
    from skinlesion.posthoc import calibrate, fit_calibration

    t, b = fit_calibration(z, y)
    return calibrate(z, t, b), y


def test_balanced_rule_trades_accuracy_for_balanced_accuracy_and_is_fitted_on_held_out_data():
    from skinlesion.posthoc import decide, fit_decision, rule_metrics

    p, y = _imbalanced()
    dec = fit_decision(p, y)
    assert dec["default"] == "most-probable" and set(dec["rules"]) == {"most-probable", "balanced"}
    assert 0.25 <= dec["rules"]["balanced"]["alpha"] <= 1.0
    m = rule_metrics(p, y, dec, CODES)
    assert m["balanced"]["balanced_accuracy"] > m["most-probable"]["balanced_accuracy"] + 0.05
    assert m["balanced"]["accuracy"] < m["most-probable"]["accuracy"]
    assert np.array_equal(decide(p, dec, "most-probable"), p.argmax(1))
    assert (decide(p, dec, "balanced") != p.argmax(1)).any()
    assert decide(p, {**dec, "default": "balanced"}).tolist() == decide(p, dec, "balanced").tolist()


@pytest.fixture(scope="module")
def balanced_model(tiny_run, tmp_path_factory):
    """The tiny run's model with a balanced rule strong enough to change some answers, as its default."""
    data, split, run = tiny_run
    weights = [1.0, 1.0, 1.0, 30.0, 1.0, 1.0, 30.0]  # df and vasc weighted up
    dec = {
        "default": "balanced",
        "rules": {"most-probable": {}, "balanced": {"alpha": 1.0, "prior": [1 / 7] * 7, "weights": weights}},
        "fitted_on": "test",
    }
    return data, split, _tiny_bundle_with(run, tmp_path_factory.mktemp("balanced"), decision=dec)


def test_the_stored_rule_is_applied_identically_by_predict_evaluate_the_app_and_onnx(balanced_model, run_cli, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from skinlesion.export import export_onnx
    from skinlesion.predict import Predictor

    data, split, model = balanced_model
    images = sorted((data / "images").glob("*.jpg"))
    torch_p = Predictor(model, backend="torch")
    preds = [torch_p.predict(p) for p in images]
    tops = [r.top for r in preds]
    plain = [max(r.probabilities, key=r.probabilities.get) for r in preds]
    assert tops != plain, "the rule must change some answers for this test to mean anything"
    assert all(r.rule == "balanced" for r in preds)
    # Python API: switchable
    assert [Predictor(model, backend="torch", rule="most-probable").predict(p).top for p in images] == plain
    # ONNX Runtime
    export_onnx(model)
    assert [Predictor(model, backend="onnx").predict(p).top for p in images] == tops
    # predict's CSV, and --rule
    code, _, err = run_cli("predict", model, *images, "--out", tmp_path / "p.csv")
    assert code == 0, err
    csv = pd.read_csv(tmp_path / "p.csv")
    assert csv["top_class"].tolist() == tops and set(csv["decision_rule"]) == {"balanced"}
    code, _, err = run_cli("predict", model, *images, "--out", tmp_path / "q.csv", "--rule", "most-probable")
    assert code == 0 and pd.read_csv(tmp_path / "q.csv")["top_class"].tolist() == plain
    # evaluate: the same class for every image, and both rules in its report
    ids = pd.DataFrame({"image_id": [p.stem for p in images]})
    ids.to_csv(tmp_path / "ids.csv", index=False)
    code, out, err = run_cli("evaluate", "--model", model, "--data", data, "--ids", tmp_path / "ids.csv", "--out", tmp_path / "ev")
    assert code == 0, err
    ev = pd.read_csv(tmp_path / "ev" / "predictions.csv").set_index("image_id").loc[[p.stem for p in images]]
    assert ev["pred"].tolist() == tops and "decision rule balanced" in out
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| balanced |" in report and "| most-probable |" in report
    # the app names the rule and the same class
    monkeypatch.setenv("SKINLESION_MODEL", str(model))
    changed = next(i for i, (a, b) in enumerate(zip(tops, plain)) if a != b)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.file_uploader[0].set_value((images[changed].name, images[changed].read_bytes(), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    heads = [str(m.value) for m in at.markdown]
    assert f"({tops[changed]})" in next(h for h in heads if h.startswith("### ")) and any("decision rule: balanced" in h for h in heads)


def test_an_unknown_or_missing_rule_is_refused_in_one_sentence(tiny_run, run_cli, tmp_path):
    data, _, run = tiny_run
    image = sorted((data / "images").glob("*.jpg"))[0]
    code, _, err = run_cli("predict", run, image, "--rule", "fastest")
    assert code == 2 and "has no 'fastest' decision rule; use one of most-probable, balanced." in err and "Traceback" not in err
    old = _tiny_bundle_with(run, tmp_path, decision=None)  # a bundle from before the rules were stored
    code, _, err = run_cli("predict", old, image, "--rule", "balanced")
    assert code == 2 and "has no 'balanced' decision rule; use one of most-probable." in err
    cfg = json.loads(old.with_suffix(".json").read_text())
    cfg["decision"] = {"default": "balanced", "rules": {"most-probable": {}, "balanced": {"weights": [1, 2]}}}
    old.with_suffix(".json").write_text(json.dumps(cfg))
    code, _, err = run_cli("predict", old, image)
    assert code == 2 and "decision.rules.balanced.weights must be 7 positive numbers" in err


# ---- subgroups -------------------------------------------------------------------------------


def test_subgroup_metrics_report_an_accuracy_that_differs_by_sex_with_intervals():
    from skinlesion.metrics import subgroup_metrics

    rng = np.random.default_rng(0)
    n = 3000
    y = rng.integers(0, 7, n)
    sex = np.where(rng.random(n) < 0.5, "male", "female")
    right = np.where(sex == "male", rng.random(n) < 0.9, rng.random(n) < 0.55)
    pred = np.where(right, y, (y + 1) % 7)
    probs = np.full((n, 7), 0.05)
    probs[np.arange(n), pred] = 0.7
    age = rng.integers(5, 90, n).astype(float)
    age[:10] = np.nan
    meta = pd.DataFrame({"age": age, "sex": sex, "localization": np.where(np.arange(n) < 20, "acral", "back")})
    m = subgroup_metrics(probs, y, meta, malignant_threshold=0.5, groups=rng.integers(0, 2000, n), n_boot=300)
    by_sex = {r["group"]: r for r in m["attributes"]["sex"]}
    male, female = by_sex["male"], by_sex["female"]
    assert abs(male["accuracy"] - 0.9) < 0.03 and abs(female["accuracy"] - 0.55) < 0.04
    assert male["accuracy_ci"][0] > female["accuracy_ci"][1]  # the difference is outside the noise
    assert male["accuracy_ci"][0] <= male["accuracy"] <= male["accuracy_ci"][1]
    sites = {r["group"]: r for r in m["attributes"]["localization"]}
    assert sites["acral"]["small"] and sites["acral"]["n"] == 20 and not sites["back"]["small"]
    ages = {r["group"]: r["n"] for r in m["attributes"]["age"]}
    assert ages["unknown"] == 10 and sum(ages.values()) == n
    assert m["resampled"] == "lesions"


def test_evaluate_reports_subgroups_from_the_dataset_metadata(tiny_run, run_cli, tmp_path):
    data, split, run = tiny_run
    code, _, err = run_cli("evaluate", "--model", run, "--data", data, "--split", split, "--out", tmp_path / "ev")
    assert code == 0, err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    sub = m["subgroups"]["attributes"]
    assert {"age", "sex", "localization", "skin_tone"} <= set(sub)
    assert sum(r["n"] for r in sub["sex"]) == m["n_images"] == sum(r["n"] for r in sub["skin_tone"])  # every image has a band
    assert sum(m["skin_tone"]["counts"].values()) == m["n_images"]
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "Subgroups (95 % bootstrap intervals" in report and "| male" in report and "| body site |" in report
    assert "| skin tone (ITA band) |" in report
