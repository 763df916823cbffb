"""Correct under concurrency, faults and bad input (issue: reliability)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def _images(data, n=6):
    from PIL import Image

    from skinlesion.intake import load_rgb

    real = [load_rgb(p) for p in sorted((data / "images").glob("*.jpg"))[: n - 2]]
    white = Image.new("RGB", (96, 72), "white")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8))
    return real + [white, noise]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_eight_threads_get_the_same_answers_as_sequential_calls(tiny_run, tmp_path, backend):
    from skinlesion.export import export_onnx
    from skinlesion.predict import Predictor

    data, _, run = tiny_run
    model = run / "best.safetensors"
    if backend == "onnx":
        import shutil

        for suffix in (".safetensors", ".json"):
            shutil.copy(model.with_suffix(suffix), tmp_path / f"m{suffix}")
        model = tmp_path / "m.safetensors"
        export_onnx(model)
    p = Predictor(model, backend=backend)
    assert p.backend == backend
    images = _images(data)
    seq = [(p.predict_images([im], [str(i)])[0], p.explain(im, target=i % 7)) for i, im in enumerate(images)]

    def call(i):
        im = images[i % len(images)]
        return i % len(images), p.predict_images([im], [str(i)])[0], p.explain(im, target=(i % len(images)) % 7)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(48)))
    for k, pred, heat in results:
        ref, ref_heat = seq[k]
        assert pred.probabilities == pytest.approx(ref.probabilities, abs=1e-6)
        assert pred.ood_score == pytest.approx(ref.ood_score, rel=1e-6, abs=1e-9)
        assert pred.out_of_distribution == ref.out_of_distribution
        assert np.allclose(heat, ref_heat, atol=1e-5)


def test_predict_isic2018_format_and_exit_codes(tiny_run, run_cli, tmp_path):
    data, _, run = tiny_run
    good = sorted((data / "images").glob("*.jpg"))[:4]
    code, out, err = run_cli("predict", run, *good, "--format", "isic2018", "--out", tmp_path / "sub.csv")
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert list(sub["image"]) == [p.stem for p in good]
    assert np.allclose(sub.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)
    code, out, err = run_cli("predict", run, *good, "--out", tmp_path / "full.csv")
    full = pd.read_csv(tmp_path / "full.csv")
    assert np.allclose(sub["MEL"], full["mel"]) and np.allclose(sub["AKIEC"], full["akiec"])
    # one unreadable file: the scorer would reject the file, so the command fails and says why
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    code, out, err = run_cli("predict", run, *good, bad, "--format", "isic2018", "--out", tmp_path / "sub2.csv")
    assert code == 1 and "could not be read" in err and "scorer" in err
    assert len(pd.read_csv(tmp_path / "sub2.csv")) == 4
    # nothing analysable: exit 1, and no CSV pretends otherwise
    code, out, err = run_cli("predict", run, bad, "--out", tmp_path / "none.csv")
    assert code == 1 and "none of the 1 file(s) could be analysed" in err


def test_predict_shows_warnings_on_the_console_as_data(tiny_run, run_cli, tmp_path):
    from PIL import Image

    data, _, run = tiny_run
    Image.new("RGB", (96, 72), "white").save(tmp_path / "white.png")
    code, out, err = run_cli("predict", run, tmp_path / "white.png", "--out", tmp_path / "w.csv")
    assert code == 0, err
    row = pd.read_csv(tmp_path / "w.csv").iloc[0]
    ood = json.loads((run / "best.json").read_text())["ood"]
    assert "min_chroma" in ood  # a flat white image has no colour at all: flagged whatever its score
    assert str(row["warnings"]).startswith("out of distribution: ") and "out of distribution" in out
    assert row["tier"] != "routine" and bool(row["refer"])


def test_predict_meta_csv_is_read_and_bad_values_are_named(tiny_run, run_cli, tmp_path):
    data, _, run = tiny_run
    img = sorted((data / "images").glob("*.jpg"))[0]
    (tmp_path / "meta.csv").write_text(f"image,age,sex,localization\n{img.name},200,male,back\n")
    code, out, err = run_cli("predict", run, img, "--meta", tmp_path / "meta.csv")
    assert code == 2 and "row 2" in err and "age 200 is outside 0-120" in err
    (tmp_path / "meta.csv").write_text("file,age\nx,3\n")
    code, out, err = run_cli("predict", run, img, "--meta", tmp_path / "meta.csv")
    assert code == 2 and "image or image_id column" in err


@pytest.mark.parametrize(
    "args,phrase",
    [
        (["--epochs", "-1"], "--epochs -1 must be at least 1"),
        (["--epochs", "0"], "--epochs 0 must be at least 1"),
        (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["--lr", "-1"], "--lr -1.0 must be a positive number"),
        (["--input-size", "0"], "--input-size 0 must be 8 to 2048"),
        (["--devices", "99"], "--devices 99 is more than this machine has"),
        (["--label-smoothing", "1.5"], "--label-smoothing 1.5 must be in [0, 1)"),
    ],
)
def test_numeric_training_options_are_checked_before_any_work(tiny_run, run_cli, tmp_path, args, phrase):
    data, split, _ = tiny_run
    code, out, err = run_cli("train", data, "--split", split, "--out", tmp_path / "run", *args)
    assert code == 2 and phrase in err and "unexpected" not in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "args",
    [
        ["bogus-verb"],
        ["split", "x", "--kind", "bogus"],
        ["prepare", "x", "--size", "abc"],
        ["train", "x", "--out", "y", "--nope"],
        ["evaluate", "--data", "x"],
    ],
)
def test_usage_errors_print_usage_and_exit_2(run_cli, args):
    code, out, err = run_cli(*args)
    assert code == 2 and "unexpected" not in err and "Usage:" in err, (args, err)


def test_crafted_resume_checkpoint_is_refused_and_its_payload_never_runs(tiny_run, tmp_path, run_cli):
    import torch

    data, split, run = tiny_run
    victim = tmp_path / "run"
    victim.mkdir()
    (victim / "config.json").write_text((run / "config.json").read_text())
    (victim / "checkpoints").mkdir()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"epoch": 0, "x": Payload()}, victim / "checkpoints" / "last.ckpt")
    cfg = json.loads((victim / "config.json").read_text())
    cfg["out"] = str(victim)
    (victim / "config.json").write_text(json.dumps(cfg))
    code, out, err = run_cli("train", data, "--split", split, "--out", victim, "--resume")
    assert code == 2 and "cannot be loaded safely" in err, err
    assert not marker.exists()


def test_two_writers_on_one_folder_are_refused(tmp_path):
    """A second process training into a folder that another holds is refused in one sentence."""
    from skinlesion.errors import lock_folder

    lock = lock_folder(tmp_path / "run")
    code = (
        "import sys; from skinlesion.errors import lock_folder, SkinLesionError\n"
        f"try:\n    lock_folder({str(tmp_path / 'run')!r})\nexcept SkinLesionError as e:\n    print(e); sys.exit(2)\n"
    )
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and "Another skinlesion run is writing into" in r.stdout, r
    assert time.time() - t0 < 30  # refused at once, not after waiting
    lock.release()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r  # free again once the first writer is done


def test_output_path_that_is_a_folder_is_refused_and_nothing_is_left(tiny_run, run_cli, tmp_path):
    data, _, run = tiny_run
    img = sorted((data / "images").glob("*.jpg"))[0]
    (tmp_path / "out.csv").mkdir()
    code, out, err = run_cli("predict", run, img, "--out", tmp_path / "out.csv")
    assert code == 2 and "is a folder" in err
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"] and not any((tmp_path / "out.csv").iterdir())


def test_progress_bar_on_a_terminal_only_and_evaluate_reports_every_image(tiny_run, tmp_path):
    import io

    from skinlesion.cli import _progress
    from skinlesion.evaluate import evaluate_model

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term, pipe = Terminal(), io.StringIO()
    for stream in (term, pipe):
        with _progress("evaluating", stream=stream) as bar:
            for done in (10, 50, 100):
                bar(done, 100)
    assert "evaluating [###############...............] 50/100" in term.getvalue()
    assert term.getvalue().endswith("100/100\n") and pipe.getvalue() == ""
    data, split, run = tiny_run
    calls = []
    m = evaluate_model(run, data, tmp_path / "ev", split=split, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (m["n_images"], m["n_images"])
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
