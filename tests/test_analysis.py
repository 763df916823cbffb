"""The analysis layer on synthetic numbers (issue: trustworthy analysis): calibration with prior
correction, metadata fusion, refer threshold, conformal sets, triage tier, and the metrics that check them."""

from __future__ import annotations

import numpy as np
import pytest

from skinlesion.classes import CODES, MALIGNANT_MASK

K = len(CODES)
SHARES = np.array([0.033, 0.05, 0.11, 0.011, 0.11, 0.67, 0.016])  # HAM10000-like imbalance


def _synthetic(n: int, seed: int, bias_shift: bool = True):
    """Labels with HAM10000's imbalance and logits of a model that over-predicts the rare classes
    (as one trained with inverse-sqrt class weights does)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(K, n, p=SHARES / SHARES.sum())
    z = rng.normal(0, 1.0, (n, K))
    z[np.arange(n), y] += 2.0
    if bias_shift:
        z -= 0.5 * np.log(SHARES)  # the class-weighting shift: rare classes pushed up
    return z, y


def test_prior_correction_brings_mean_predicted_shares_to_the_true_shares():
    from skinlesion.posthoc import calibrate, fit_calibration

    z, y = _synthetic(20000, 0)
    true = np.bincount(y, minlength=K) / len(y)
    t_only, _ = fit_calibration(z, y, bias=False)
    plain = calibrate(z, t_only).mean(0)
    t, b = fit_calibration(z, y)
    fixed = calibrate(z, t, b).mean(0)
    # temperature alone leaves rare classes over-predicted (akiec, df); the bias corrects every class
    assert plain[CODES.index("df")] > 1.5 * true[CODES.index("df")]
    assert np.abs(fixed - true).max() < 0.002, (fixed, true)
    # and on a fresh sample of the same population it still holds (it is a property, not an overfit)
    z2, y2 = _synthetic(20000, 1)
    assert np.abs(calibrate(z2, t, b).mean(0) - np.bincount(y2, minlength=K) / len(y2)).max() < 0.01


def test_per_class_calibration_metrics_report_the_shift():
    from skinlesion.metrics import class_calibration
    from skinlesion.posthoc import calibrate, fit_calibration

    z, y = _synthetic(8000, 2)
    before = class_calibration(calibrate(z), y)
    t, b = fit_calibration(z, y)
    after = class_calibration(calibrate(z, t, b), y)
    assert before["df"]["mean_predicted"] > 2 * before["df"]["actual_share"]
    assert abs(after["df"]["mean_predicted"] - after["df"]["actual_share"]) < 0.003
    assert after["nv"]["ece"] < before["nv"]["ece"] and after["malignant"]["ece"] < before["malignant"]["ece"]


def test_conformal_sets_reach_nominal_coverage_on_held_out_data():
    from skinlesion.metrics import conformal_metrics
    from skinlesion.posthoc import calibrate, fit_calibration, fit_conformal, prediction_sets

    z, y = _synthetic(6000, 3)
    t, b = fit_calibration(z[:3000], y[:3000])
    alphas = fit_conformal(calibrate(z[:3000], t, b), y[:3000])
    for confidence in (0.8, 0.9, 0.95):
        sets = prediction_sets(calibrate(z[3000:], t, b), alphas, confidence)
        m = conformal_metrics(sets, y[3000:])
        assert confidence - 0.02 <= m["coverage"] <= confidence + 0.03, (confidence, m["coverage"])
        assert 0.5 < m["mean_size"] < K  # crepes may give an empty set at low confidence
    # a higher confidence never gives smaller sets
    s90 = prediction_sets(calibrate(z[3000:], t, b), alphas, 0.9)
    s95 = prediction_sets(calibrate(z[3000:], t, b), alphas, 0.95)
    assert (s95 >= s90).all()


def test_refer_threshold_reaches_its_target_coverage_and_raises_accuracy():
    from skinlesion.metrics import risk_coverage
    from skinlesion.posthoc import calibrate, fit_calibration, fit_refer

    z, y = _synthetic(10000, 4)
    t, b = fit_calibration(z[:5000], y[:5000])
    p_fit, p_new = calibrate(z[:5000], t, b), calibrate(z[5000:], t, b)
    for target in (0.5, 0.8, 0.9):
        thr = fit_refer(p_fit, target)
        assert abs((p_fit.max(1) >= thr).mean() - target) < 0.005
        assert abs((p_new.max(1) >= thr).mean() - target) < 0.03  # held out: still close
    rc = risk_coverage(p_new, y[5000:])
    acc = [r["accuracy"] for r in rc]
    assert [r["coverage"] for r in rc] == [0.5, 0.7, 0.8, 0.9, 1.0]
    assert acc[0] > acc[-1] + 0.05 and all(a >= b - 1e-9 for a, b in zip(acc, acc[1:]))


def test_tier_threshold_reaches_its_malignant_sensitivity():
    from skinlesion.posthoc import calibrate, fit_calibration, fit_tier, malignant

    z, y = _synthetic(10000, 5)
    t, b = fit_calibration(z, y)
    p = calibrate(z, t, b)
    mal = np.asarray(MALIGNANT_MASK)[y]
    for target in (0.8, 0.9, 0.95):
        thr = fit_tier(p, y, target)
        sens = (malignant(p)[mal] >= thr).mean()
        assert target <= sens <= target + 0.01, (target, sens)


def test_analyse_gives_refer_set_and_tier_from_the_bundle_rules():
    from skinlesion.bundle import Member, ModelConfig
    from skinlesion.posthoc import TIER_REFER, TIER_ROUTINE, TIER_SOON, analyse, fit_rules

    z, y = _synthetic(4000, 6)
    from skinlesion.posthoc import calibrate, fit_calibration

    t, b = fit_calibration(z, y)
    p = calibrate(z, t, b)
    fields, aux = fit_rules(p, y)
    cfg = ModelConfig(preprocess={"input_size": 32}, members=[Member("resnet18")], **fields)
    sure_nv = np.full((1, K), 0.001)
    sure_nv[0, CODES.index("nv")] = 1 - 0.006
    sure_mel = np.full((1, K), 0.001)
    sure_mel[0, CODES.index("mel")] = 1 - 0.006
    flat = np.full((1, K), 1 / K)
    r = analyse(np.vstack([sure_nv, sure_mel, flat, sure_nv]), cfg, aux, ood_flags=[False, False, False, True])
    assert r[0]["tier"] == TIER_ROUTINE and not r[0]["refer"] and r[0]["prediction_set"] == ["nv"]
    assert r[1]["tier"] == TIER_SOON and r[1]["prediction_set"] == ["mel"]
    # a flat answer is unsure, but its malignant probability (3/7) is above the threshold: "soon" wins, the reason is kept
    assert r[2]["refer"] and r[2]["tier"] == TIER_SOON and "confidence" in r[2]["refer_reason"]
    unsure_benign = np.full((1, K), 0.001)
    unsure_benign[0, CODES.index("nv")], unsure_benign[0, CODES.index("bkl")] = 0.5, 0.495
    assert analyse(unsure_benign, cfg, aux)[0]["tier"] == TIER_REFER
    assert len(r[2]["prediction_set"]) != 1  # a flat answer never becomes one confident class (empty or wide set)
    assert r[3]["refer"] and "out of distribution" in r[3]["refer_reason"]  # an OOD image is always referred


def test_metadata_fusion_beats_image_only_when_the_label_depends_on_it_and_tolerates_missing_fields():
    from sklearn.metrics import accuracy_score

    from skinlesion.posthoc import LOCALIZATIONS, apply_metadata, calibrate, encode_metadata, fit_calibration, fit_metadata

    rng = np.random.default_rng(7)
    n = 6000
    sites = rng.choice(LOCALIZATIONS, n)
    age = rng.uniform(5, 90, n)
    sex = rng.choice(["male", "female"], n)
    # the label depends on the metadata: old patients' back lesions are mel, young ones' are nv; the image is weak
    y = np.where((sites == "back") & (age > 50), CODES.index("mel"), np.where(age < 30, CODES.index("nv"), rng.choice(K, n)))
    z = rng.normal(0, 1, (n, K))
    z[np.arange(n), y] += 0.7
    meta = [{"age": a, "sex": s, "localization": site} for a, s, site in zip(age, sex, sites)]
    x = encode_metadata(meta)
    tr, te = np.arange(n) < 4000, np.arange(n) >= 4000
    t, b = fit_calibration(z[tr], y[tr])
    lp = np.log(calibrate(z, t, b))
    tensors = fit_metadata(lp[tr], x[tr], y[tr])
    image_only = accuracy_score(y[te], lp[te].argmax(1))
    fused = apply_metadata(lp[te], x[te], tensors)
    assert accuracy_score(y[te], fused.argmax(1)) > image_only + 0.05
    # any field may be missing: probabilities stay a finite distribution, and with nothing known
    # the fusion falls back near the image-only answer
    for drop in ("age", "sex", "localization"):
        partial = encode_metadata([{k: v for k, v in m.items() if k != drop} for m in np.array(meta)[te]])
        p = apply_metadata(lp[te], partial, tensors)
        assert np.isfinite(p).all() and np.allclose(p.sum(1), 1)
    none = apply_metadata(lp[te], encode_metadata([{}] * int(te.sum())), tensors)
    assert (none.argmax(1) == lp[te].argmax(1)).mean() > 0.8


@pytest.mark.parametrize(
    "row,phrase",
    [
        ({"age": "old"}, "not a number"),
        ({"age": 150}, "outside"),
        ({"sex": "x"}, "not one of"),
        ({"localization": "moon"}, "not a HAM10000 site"),
    ],
)
def test_bad_metadata_is_named(row, phrase):
    from skinlesion.posthoc import encode_metadata

    with pytest.raises(ValueError, match=phrase):
        encode_metadata([row])


def test_unknown_and_empty_metadata_count_as_missing():
    from skinlesion.posthoc import encode_metadata

    x = encode_metadata([{"age": None, "sex": "unknown", "localization": ""}, {}])
    assert (x[:, 1] == 1).all() and x[:, [0, *range(2, x.shape[1])]].sum() == 0
