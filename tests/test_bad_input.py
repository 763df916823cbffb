"""Each bad input gets one clear sentence and a non-zero exit, never a traceback."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from skinlesion.data.synthetic import write_synthetic


@pytest.fixture
def small(tmp_path):
    return write_synthetic(tmp_path / "data", n_lesions=8, layout="flat", size=(64, 48), min_per_class=1)


def _edit_csv(root, fn):
    p = root / "HAM10000_metadata.csv"
    df = fn(pd.read_csv(p))
    df.to_csv(p, index=False)


def _fails(run_cli, args, *phrases):
    code, out, err = run_cli(*args)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one sentence, one line
    for p in phrases:
        assert p in err, (p, err)
    return err


def test_missing_columns(small, run_cli):
    _edit_csv(small, lambda d: d.drop(columns=["lesion_id", "dx"]))
    _fails(run_cli, ["info", small], "lacks the required column(s) lesion_id, dx")


def test_unknown_labels(small, run_cli):
    _edit_csv(small, lambda d: d.assign(dx=["melanoma"] + list(d["dx"][1:])))
    _fails(run_cli, ["info", small], "unknown dx code(s) 'melanoma' (1 rows)", "akiec")


def test_duplicate_ids(small, run_cli):
    _edit_csv(small, lambda d: pd.concat([d, d.iloc[:2]]))
    _fails(run_cli, ["split", small, "--out", small / "s.csv"], "2 duplicate image_id(s)")


def test_missing_images_and_allow_missing(small, run_cli):
    imgs = sorted((small / "images").glob("*.jpg"))
    for p in imgs[:3]:
        p.unlink()
    err = _fails(run_cli, ["info", small], "3 of", "are missing", imgs[0].stem, "--allow-missing")
    assert "3 of" in err
    code, out, err = run_cli("info", small, "--allow-missing")
    assert code == 0 and "rows were dropped" in err
    n = len(pd.read_csv(small / "HAM10000_metadata.csv"))
    assert f"images: {n - 3}" in out


def test_truncated_and_non_image_files(small, run_cli):
    imgs = sorted((small / "images").glob("*.jpg"))
    data = imgs[0].read_bytes()
    imgs[0].write_bytes(data[: len(data) // 2])  # truncated JPEG
    imgs[1].write_text("this is not an image")
    err = _fails(run_cli, ["info", small], "2 image file(s) cannot be read")
    assert imgs[0].name in err or imgs[1].name in err


def test_empty_image_file(small, run_cli):
    img = sorted((small / "images").glob("*.jpg"))[0]
    img.write_bytes(b"")
    _fails(run_cli, ["info", small], "empty file (0 bytes)")


def test_empty_folder(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    _fails(run_cli, ["info", tmp_path / "empty"], "is an empty folder")


def test_path_does_not_exist(tmp_path, run_cli):
    _fails(run_cli, ["info", tmp_path / "nope"], "does not exist")


def test_folder_without_metadata(tmp_path, run_cli):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "readme.txt").write_text("hi")
    _fails(run_cli, ["info", tmp_path / "x"], "No HAM10000_metadata.csv found")


def test_empty_csv(small, run_cli):
    (small / "HAM10000_metadata.csv").write_text("")
    _fails(run_cli, ["info", small], "is empty")


def test_npz_without_dermamnist_arrays(tmp_path, run_cli):
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    _fails(run_cli, ["info", tmp_path / "x.npz"], "has none of the DermaMNIST arrays")


def test_npz_with_bad_labels(tmp_path, run_cli):
    np.savez(tmp_path / "x.npz", train_images=np.zeros((2, 28, 28, 3), np.uint8), train_labels=np.array([[0], [9]]))
    _fails(run_cli, ["info", tmp_path / "x.npz"], "outside 0..6")


def test_official_split_when_there_is_none(small, run_cli):
    _fails(run_cli, ["split", small, "--kind", "official", "--out", small / "s.csv"], "has no official split")


def test_unexpected_errors_have_no_traceback(monkeypatch, small, run_cli):
    import skinlesion.data.ham10000 as h

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(h, "read_metadata", boom)
    code, out, err = run_cli("info", small)
    assert code == 1 and "Traceback" not in err and "unexpected RuntimeError: kaboom" in err


@pytest.mark.parametrize("source,host", [("ham10000", "www.kaggle.com"), ("dermamnist", "zenodo.org")])
def test_download_offline_fails_fast_with_instructions(source, host, tmp_path, run_cli, monkeypatch):
    import socket

    def offline(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", offline)  # CI is offline anyway; make it certain
    t = time.time()
    err = _fails(run_cli, ["download", source, "--to", tmp_path / "d"], f"Cannot reach {host}", "by hand")
    assert time.time() - t < 30
    assert "https://" in err


def test_help_is_fast_and_lazy():
    import subprocess
    import sys

    code = "import sys, skinlesion.cli; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    t = time.time()
    res = subprocess.run([sys.executable, "-m", "skinlesion.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "info" in res.stdout and "split" in res.stdout
    assert time.time() - t < 5  # generous bound; the real figure (~0.5 s) is in benchmarks/RESULTS.md
