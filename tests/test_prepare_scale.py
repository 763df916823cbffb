"""Prepared cache, the input pipeline, DDP sharding and the throughput benchmark (issue: full resolution)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.errors import SkinLesionError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "resnet18", "--input-size", "32", "--batch-size", "8", "--no-progress", "--num-workers", "0"]


@pytest.fixture(scope="module")
def cache(synth_kaggle, tmp_path_factory):
    from skinlesion.data.prepare import prepare

    out = tmp_path_factory.mktemp("cache") / "c64"
    prepare(synth_kaggle, out, 64, progress=False)
    return out


def test_cache_equals_a_direct_resize_and_keeps_metadata(synth_kaggle, cache, run_cli):
    from skinlesion.data import load_dataset

    raw, cached = load_dataset(synth_kaggle), load_dataset(cache)
    assert cached.layout == "cache" and cached.arrays.shape == (len(raw), 64, 64, 3)
    assert list(cached.meta["image_id"]) == list(raw.meta["image_id"])
    assert list(cached.meta["lesion_id"]) == list(raw.meta["lesion_id"])
    for i in (0, len(raw) // 2, len(raw) - 1):
        with Image.open(raw.meta["path"].iat[i]) as im:
            direct = np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR), dtype=int)
        assert np.abs(np.asarray(cached.image(i), dtype=int) - direct).max() <= 1
    code, out, _ = run_cli("info", cache)
    assert code == 0 and "layout: cache" in out and f"images: {len(raw)}" in out


def test_cache_and_raw_give_the_same_first_batch(synth_kaggle, cache, tmp_path, run_cli):
    import lightning as L
    import torch

    from skinlesion.data import load_dataset
    from skinlesion.data.split import read_manifest
    from skinlesion.train import TrainConfig, build_loaders

    run_cli("split", synth_kaggle, "--out", tmp_path / "split.csv")
    manifest = read_manifest(tmp_path / "split.csv")
    batches = []
    for data, source in ((cache, None), (synth_kaggle, 64)):
        cfg = TrainConfig(
            data=str(data),
            split=str(tmp_path / "split.csv"),
            out=str(tmp_path / "x"),
            backbone="resnet18",
            input_size=48,
            source_size=source,
            batch_size=8,
            num_workers=0,
            seed=7,
        )
        L.seed_everything(7)
        cfg, prep, *_, loader, _ = build_loaders(cfg, load_dataset(data), manifest)
        assert prep.source_size == 64
        batches.append(next(iter(loader)))
    (xa, ya, pa), (xb, yb, pb) = batches
    assert torch.equal(pa, pb) and torch.equal(ya, yb)
    assert torch.allclose(xa, xb, atol=1e-6), float((xa - xb).abs().max())


def test_interrupted_prepare_resumes_without_redoing(synth_kaggle, tmp_path, monkeypatch):
    import skinlesion.data.prepare as prep_mod
    from skinlesion.data.ham10000 import Dataset, load_dataset

    monkeypatch.setattr(prep_mod, "CHUNK", 10)
    calls = {"n": 0}
    real_image = Dataset.image

    def counting(self, i, stop_at=None):
        calls["n"] += 1
        if calls.get("stop") and calls["n"] > calls["stop"]:
            raise KeyboardInterrupt  # the user pressed Ctrl-C
        return real_image(self, i)

    monkeypatch.setattr(Dataset, "image", counting)
    calls["stop"] = 25
    with pytest.raises(KeyboardInterrupt):
        prep_mod.prepare(synth_kaggle, tmp_path / "c", 32, progress=False)
    state = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert state["done"] == 20  # two whole chunks were saved
    with pytest.raises(SkinLesionError, match="incomplete"):
        load_dataset(tmp_path / "c")
    calls.update(n=0, stop=None)
    state = prep_mod.prepare(synth_kaggle, tmp_path / "c", 32, progress=False)
    n = state["n"]
    assert state["done"] == n and calls["n"] == n - 20  # only the rest was decoded
    # the result equals a cache made in one go
    monkeypatch.setattr(Dataset, "image", real_image)
    prep_mod.prepare(synth_kaggle, tmp_path / "d", 32, progress=False)
    assert np.array_equal(np.load(tmp_path / "c" / "images.npy"), np.load(tmp_path / "d" / "images.npy"))


def test_prepare_refuses_to_mix_sizes(synth_kaggle, cache, run_cli):
    code, out, err = run_cli("prepare", synth_kaggle, "--size", "128", "--out", cache)
    assert code == 2 and "64x64" in err and "will not mix" in err


def test_ddp_shards_are_disjoint_and_match_a_single_process_run(synth_kaggle, cache, tmp_path, run_cli):
    run_cli("split", synth_kaggle, "--out", tmp_path / "split.csv")
    base = [
        sys.executable,
        "-m",
        "skinlesion.cli",
        "train",
        str(cache),
        "--split",
        str(tmp_path / "split.csv"),
        "--epochs",
        "1",
        "--record-shards",
        "--accelerator",
        "cpu",
        "--augment-on",
        "device",  # each rank augments its own uint8 batches on its own device (a model fed uint8 would not train)
        *TINY,
    ]
    ddp = subprocess.run(
        base + ["--out", str(tmp_path / "ddp"), "--devices", "2", "--strategy", "ddp"], capture_output=True, text=True, timeout=600
    )
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    single = subprocess.run(
        base + ["--out", str(tmp_path / "one"), "--devices", "1", "--batch-size", "16"], capture_output=True, text=True, timeout=600
    )
    assert single.returncode == 0, single.stdout + single.stderr
    r0 = set(map(int, (tmp_path / "ddp" / "shards" / "rank0.txt").read_text().split()))
    r1 = set(map(int, (tmp_path / "ddp" / "shards" / "rank1.txt").read_text().split()))
    train_n = int((pd.read_csv(tmp_path / "split.csv")["split"] == "train").sum())
    assert r0 and r1 and not (r0 & r1), "ranks trained on overlapping images"
    assert len(r0) + len(r1) >= train_n - 16  # together they cover the train split (drop_last aside)
    m_ddp = pd.read_csv(tmp_path / "ddp" / "metrics.csv").iloc[0]
    m_one = pd.read_csv(tmp_path / "one" / "metrics.csv").iloc[0]
    assert m_ddp["val_n"] == m_one["val_n"]  # every val image counted once under DDP
    assert abs(m_ddp["val_loss"] - m_one["val_loss"]) < 0.5
    assert json.loads((tmp_path / "ddp" / "best.json").read_text())["preprocess"]["source_size"] == 64
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["augment_on"] == "device"


def test_throughput_benchmark_smoke(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import throughput
    finally:
        sys.path.pop(0)
    r = throughput.main(["--smoke", "--cpu", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.json")])
    for k in ("a_reference", "b_raw_jpeg", "c_cache", "d_compute_only", "c_over_d", "c_over_a"):
        assert r[k] > 0
    assert json.loads((tmp_path / "r.json").read_text())["model"] == "resnet18"
