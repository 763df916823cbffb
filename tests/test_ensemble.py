"""Cross-validated ensembles and the model bundle (issues: trustworthy analysis; one owner per concern)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from skinlesion.classes import CODES

from .conftest import shared


def test_real_folds_share_no_lesion_and_are_stratified():
    from skinlesion.data.ham10000 import read_metadata
    from skinlesion.data.split import cv_folds

    meta = read_metadata(shared("dermamnist28", "HAM10000_metadata.csv"))
    folds = cv_folds(meta, 5, seed=42)
    assert len(folds) == 8010 and set(folds) == set(range(5))
    assert (meta.assign(f=folds).groupby("lesion_id")["f"].nunique() == 1).all()  # no lesion in two folds
    share = pd.crosstab(folds, meta["dx"], normalize="index")
    assert (share.max() - share.min()).max() < 0.01  # every class within a point of its share in each fold


def test_every_image_gets_exactly_one_out_of_fold_prediction_from_the_member_that_never_saw_it(tiny_cv):
    data, run = tiny_cv
    folds = pd.read_csv(run / "folds.csv", dtype={"image_id": str})
    oof = pd.read_csv(run / "oof.csv", dtype={"image_id": str})
    meta = pd.read_csv(data / "HAM10000_metadata.csv", dtype={"image_id": str})
    assert sorted(oof["image_id"]) == sorted(meta["image_id"]) and not oof["image_id"].duplicated().any()
    assert (folds.groupby("lesion_id")["fold"].nunique() == 1).all()
    for i in range(3):
        member_split = pd.read_csv(run / f"fold{i}" / "split.csv", dtype={"image_id": str})
        val = set(member_split.loc[member_split["split"] == "val", "image_id"])
        assert val == set(folds.loc[folds["fold"] == i, "image_id"])  # selected on its own fold, trained on the rest
        assert not val & set(member_split.loc[member_split["split"] == "train", "image_id"])
    assert oof.set_index("image_id").loc[folds["image_id"], "fold"].tolist() == folds["fold"].tolist()


def test_ensemble_probabilities_are_the_mean_of_the_members(tiny_cv):
    import torch

    from skinlesion.bundle import load_model

    _, run = tiny_cv
    net, cfg = load_model(run)
    assert len(cfg.members) == 3 and [m.fold for m in cfg.members] == [0, 1, 2]
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        combined = torch.softmax(net(x), -1)
        members = torch.stack([torch.softmax(m(x), -1) for m in net.members]).mean(0)
    assert torch.allclose(combined, members, atol=1e-6)
    assert not torch.allclose(torch.softmax(net.members[0](x), -1), members, atol=1e-3)  # the members differ


def test_bundle_records_versions_rules_and_oof_and_predictor_carries_them(tiny_cv):
    from skinlesion.predict import Predictor

    data, run = tiny_cv
    cfg = json.loads((run / "model.json").read_text())
    assert cfg["format_version"] == 2 and set(cfg["created_with"]) >= {"skinlesion", "torch", "timm"}
    assert cfg["temperature"] > 0 and len(cfg["class_bias"]) == 7 and cfg["metadata"] is not None
    assert {"refer", "conformal", "tier"} <= set(cfg) and cfg["metrics"]["evaluated_on"] == "out-of-fold"
    p = Predictor(run, backend="torch")
    img = sorted((data / "images").glob("*.jpg"))[0]
    r = p.predict(img, meta={"age": 45, "sex": "female", "localization": "back"})
    assert r.tier in ("see a dermatologist soon", "unsure: refer", "routine")
    assert set(r.prediction_set) <= set(CODES) and isinstance(r.refer, bool)
    row = r.row()
    assert {"prediction_set", "tier", "refer", "refer_reason"} <= set(row)


@pytest.mark.parametrize("missing", ["age", "sex", "localization", "all"])
def test_prediction_works_with_each_metadata_field_missing(tiny_cv, missing):
    from skinlesion.predict import Predictor

    data, run = tiny_cv
    p = Predictor(run, backend="torch")
    assert p.uses_metadata
    full = {"age": 60, "sex": "male", "localization": "trunk"}
    meta = {} if missing == "all" else {k: v for k, v in full.items() if k != missing}
    img = sorted((data / "images").glob("*.jpg"))[1]
    r = p.predict(img, meta=meta)
    probs = np.array(list(r.probabilities.values()))
    assert np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-6
    if missing != "all":  # metadata moves the answer: it is really used
        assert not np.allclose(probs, list(p.predict(img, meta=full).probabilities.values()))


def test_oof_metrics_are_reproduced_from_the_bundle(tiny_cv):
    from skinlesion.bundle import load_config, read_tensors
    from skinlesion.card import oof_metrics, render

    _, run = tiny_cv
    cfg = load_config(run / "model.safetensors")
    m = oof_metrics(cfg, read_tensors(run / "model.safetensors"))
    stored = json.loads((run / "oof_metrics.json").read_text())
    for k in ("accuracy", "balanced_accuracy", "auc_macro", "nll"):
        assert m[k] == pytest.approx(stored[k], abs=1e-9) and m[k] == pytest.approx(cfg.metrics[k], abs=1e-9)
    card = render(run / "model.safetensors")
    assert f"| accuracy | {m['accuracy']:.4f} |" in card and "## Out-of-fold metrics" in card
    assert "Risk-coverage" in card and "Conformal prediction sets" in card and "ablation" in card


def test_cv_resumes_without_retraining_finished_members(tiny_cv, tmp_path):
    from skinlesion.cv import train_members
    from skinlesion.train import TrainConfig

    data, run = tiny_cv
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {i: (copy / f"fold{i}" / "best.safetensors").stat().st_mtime_ns for i in range(3)}
    saved = json.loads((copy / "cv_config.json").read_text())
    saved.pop("folds")
    cfg = TrainConfig(**{**saved, "out": str(copy)})
    train_members(cfg, 3)
    assert {i: (copy / f"fold{i}" / "best.safetensors").stat().st_mtime_ns for i in range(3)} == before
    # asking for another number of folds in that folder is refused in one sentence
    from skinlesion.errors import SkinLesionError

    with pytest.raises(SkinLesionError, match="other folds"):
        train_members(cfg, 4)


def _broken(src, tmp_path, change):
    dst = tmp_path / "m"
    dst.mkdir(exist_ok=True)
    shutil.copy(src / "best.safetensors", dst / "model.safetensors")
    cfg = json.loads((src / "best.json").read_text())
    cfg = change(cfg)
    (dst / "model.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    "name,change,phrase",
    [
        ("temperature 0", lambda c: {**c, "temperature": 0}, "temperature"),
        ("temperature -1", lambda c: {**c, "temperature": -1}, "temperature"),
        ("no preprocessing", lambda c: {k: v for k, v in c.items() if k != "preprocess"}, "preprocess"),
        ("a JSON list", lambda c: [c], "JSON object"),
        ("input size 0", lambda c: {**c, "preprocess": {**c["preprocess"], "input_size": 0}}, "input_size"),
        ("unknown backbone", lambda c: {**c, "members": [{**c["members"][0], "backbone": "resnet_9000"}]}, "backbone"),
        ("wrong classes", lambda c: {**c, "classes": list(reversed(c["classes"]))}, "classes"),
        ("NaN class bias", lambda c: {**c, "class_bias": [float("nan")] * 7}, "class_bias"),
    ],
)
def test_broken_configs_are_refused_by_predict_and_evaluate(tiny_run, run_cli, tmp_path, name, change, phrase):
    data, split, run = tiny_run
    model = _broken(run, tmp_path, change)
    img = sorted((data / "images").glob("*.jpg"))[0]
    for args in (("predict", model, img), ("evaluate", "--model", model, "--data", data, "--out", tmp_path / "ev")):
        code, out, err = run_cli(*args)
        assert code == 2, (name, args[0], out, err)
        assert "invalid" in err and phrase in err and "unexpected" not in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_decision_rule_table_trades_accuracy_for_balanced_accuracy_on_the_shipped_oof(default_model):
    """benchmarks/decision_rule.py: alpha 0 is the shipped rule (its cross-fitted accuracy as stored at assembly,
    from fp32 members; the bundle's refreshed logits are the fp16 ones), and dividing by the priors moves
    answers to rare classes: balanced accuracy up, accuracy down, monotonically."""
    from skinlesion.bundle import load_config

    from .conftest import benchmark

    rows = benchmark("decision_rule").table("default")["rows"]
    stored = load_config(default_model, check_backbones=False).metrics["cross_fitted"]
    assert rows[0]["alpha"] == 0 and rows[0]["accuracy"] == pytest.approx(stored["accuracy"], abs=0.003)
    assert rows[0]["balanced_accuracy"] == pytest.approx(stored["balanced_accuracy"], abs=0.005)
    bal = [r["balanced_accuracy"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    assert all(b2 > b1 for b1, b2 in zip(bal, bal[1:])) and all(a2 < a1 for a1, a2 in zip(acc, acc[1:])), rows
