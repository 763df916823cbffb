"""Our metrics against tools we did not write: the official ISIC 2018 scorer and medmnist's evaluator,
on one fixed prediction set; and the ISIC 2018 files we write and read (issue: formats and audit)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinlesion.classes import CODES
from skinlesion.metrics import compute_metrics

from .conftest import shared

ROOT = Path(__file__).resolve().parents[1]
ISIC_PY = ROOT / ".venv-isic" / "bin" / "python"


def fixed_predictions(n: int = 600, seed: int = 0):
    """Imbalanced labels (HAM10000-like shares) and informative but imperfect probabilities."""
    rng = np.random.default_rng(seed)
    share = np.array([0.033, 0.051, 0.11, 0.012, 0.11, 0.67, 0.014])
    labels = rng.choice(7, n, p=share / share.sum())
    labels[:7] = np.arange(7)  # every class present
    z = rng.normal(size=(n, 7)) + 1.6 * np.eye(7)[labels] + np.log(share)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    return ids, labels, p


def _truth_csv(ids, labels, path):
    from skinlesion.isic import COLUMNS

    onehot = np.eye(7)[labels]
    table = pd.DataFrame({"image": ids, **{c: onehot[:, CODES.index(c.lower())] for c in COLUMNS[1:]}})
    table.to_csv(path, index=False)


def test_the_official_isic_2018_scorer_agrees_with_our_metrics(tmp_path):
    if not ISIC_PY.exists():
        pytest.skip("the official scorer's environment .venv-isic is missing (make isic-env installs it)")
    from skinlesion.isic import submission

    ids, labels, p = fixed_predictions()
    _truth_csv(ids, labels, tmp_path / "truth.csv")
    submission(ids, p).to_csv(tmp_path / "sub.csv", index=False)  # the writer `predict --format isic2018` uses
    script = (
        "import json, pathlib, sys, warnings; warnings.simplefilter('ignore');"
        "from isic_challenge_scoring import ClassificationScore, ClassificationMetric;"
        "s = ClassificationScore.from_file(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), ClassificationMetric.BALANCED_ACCURACY);"
        "print(json.dumps(s.to_dict(rocs=False)))"
    )
    r = subprocess.run([str(ISIC_PY), "-c", script, str(tmp_path / "truth.csv"), str(tmp_path / "sub.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    official = json.loads(r.stdout)
    ours = compute_metrics(p, labels)
    assert official["aggregate"]["balanced_accuracy"] == pytest.approx(ours["balanced_accuracy"], abs=1e-9)
    for c in CODES:
        assert official["per_category"]["auc"][c.upper()] == pytest.approx(ours["per_class"][c]["auc"], abs=1e-9), c
    # the documented difference: the scorer calls a class predicted when its probability exceeds 0.5,
    # so its per-class sensitivity is not our top-class recall
    for c in CODES:
        j = CODES.index(c)
        at_half = float(np.mean(p[labels == j, j] > 0.5))
        assert official["per_category"]["sensitivity"][c.upper()] == pytest.approx(at_half, abs=1e-9), c
    mel = CODES.index("mel")
    assert ours["per_class"]["mel"]["recall"] != pytest.approx(float(np.mean(p[labels == mel, mel] > 0.5)), abs=1e-3)


def test_medmnist_evaluator_agrees_with_our_accuracy_and_auc():
    from medmnist.evaluator import getACC, getAUC

    _, labels, p = fixed_predictions(seed=1)
    ours = compute_metrics(p, labels)
    assert getACC(labels, p, "multi-class") == pytest.approx(ours["accuracy"], abs=1e-9)
    assert getAUC(labels, p, "multi-class") == pytest.approx(ours["auc_macro"], abs=1e-9)


def test_evaluate_reads_an_isic_ground_truth_csv_as_labels(tiny_run, run_cli, tmp_path):
    data, split, run = tiny_run
    m = pd.read_csv(split)
    test = m[m["split"] == "test"]
    _truth_csv(list(test["image_id"]), [CODES.index(d) for d in test["dx"]], tmp_path / "truth.csv")
    code, _, err = run_cli("evaluate", "-m", run, "-d", data, "-o", tmp_path / "by_split", "--split", split)
    assert code == 0, err
    code, _, err = run_cli("evaluate", "-m", run, "-d", data, "-o", tmp_path / "by_truth", "--labels", tmp_path / "truth.csv")
    assert code == 0, err
    a = json.loads((tmp_path / "by_split" / "metrics.json").read_text())
    b = json.loads((tmp_path / "by_truth" / "metrics.json").read_text())
    for k in ("n_images", "accuracy", "balanced_accuracy", "auc_macro"):
        assert a[k] == pytest.approx(b[k]), k
    # a ground truth whose labels differ changes the numbers: the labels do come from the file
    flipped = pd.read_csv(tmp_path / "truth.csv")
    flipped[["MEL", "NV"]] = flipped[["NV", "MEL"]].to_numpy()
    flipped.to_csv(tmp_path / "flipped.csv", index=False)
    code, _, err = run_cli("evaluate", "-m", run, "-d", data, "-o", tmp_path / "flipped", "--labels", tmp_path / "flipped.csv")
    assert code == 0, err
    assert json.loads((tmp_path / "flipped" / "metrics.json").read_text())["accuracy"] != pytest.approx(a["accuracy"])
    # not one-hot, and unknown images: one sentence each
    bad = pd.read_csv(tmp_path / "truth.csv")
    bad.loc[0, "MEL"] = 0.5
    bad.to_csv(tmp_path / "bad.csv", index=False)
    code, _, err = run_cli("evaluate", "-m", run, "-d", data, "-o", tmp_path / "x", "--labels", tmp_path / "bad.csv")
    assert code == 2 and "not one-hot" in err
    bad = pd.read_csv(tmp_path / "truth.csv")
    bad.loc[0, "image"] = "ISIC_9999999"
    bad.to_csv(tmp_path / "unknown.csv", index=False)
    code, _, err = run_cli("evaluate", "-m", run, "-d", data, "-o", tmp_path / "y", "--labels", tmp_path / "unknown.csv")
    assert code == 2 and "ISIC_9999999" in err


def test_isic_submission_on_real_images_matches_the_full_rows(default_model, run_cli, tmp_path):
    images = sorted(shared("dermamnist28", "images").glob("*.jpg"))[:6] + [shared("fullres", "ISIC_0024310.jpg")]
    code, _, err = run_cli("predict", "default", *images, "--format", "isic2018", "--out", tmp_path / "sub.csv")
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert list(sub["image"]) == [p.stem for p in images]
    assert np.allclose(sub.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5) and ((sub.iloc[:, 1:] >= 0) & (sub.iloc[:, 1:] <= 1)).all().all()
    code, _, err = run_cli("predict", "default", *images, "--out", tmp_path / "full.csv")
    full = pd.read_csv(tmp_path / "full.csv")
    for c in CODES:
        assert np.allclose(sub[c.upper()], full[c]), c
