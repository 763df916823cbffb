"""litdata streaming chunks (skinlesion.data.shards, skinlesion.data.stream): prepare, read, stream, shard, refuse."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("litdata")

SIZE = 64  # 12 KB an image: at --chunk-mb 0.05 the synthetic set makes about 15 chunks


@pytest.fixture(scope="module")
def prepared(synth_kaggle, tmp_path_factory):
    """The synthetic set as litdata chunks and as a memory-mapped cache of the same size, and a lesion split."""
    from skinlesion.cli import main

    root = tmp_path_factory.mktemp("litdata")
    lit, cache, split = root / "chunks", root / "cache", root / "split.csv"
    for args in (
        ["prepare", synth_kaggle, "--format", "litdata", "--size", SIZE, "--chunk-mb", "0.05", "--out", lit],
        ["prepare", synth_kaggle, "--size", SIZE, "--out", cache],
        ["split", lit, "--out", split],
    ):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            assert not exc.code, args
    return lit, cache, split


def test_chunks_read_back_as_the_cache(prepared, run_cli):
    from skinlesion.data import load_dataset

    lit, cache, _ = prepared
    a, b = load_dataset(lit), load_dataset(cache)
    assert a.layout == "litdata" and b.layout == "cache"
    assert len(json.loads((lit / "index.json").read_text())["chunks"]) > 4  # really sharded
    cols = ["image_id", "lesion_id", "dx", "label", "age", "sex", "localization"]
    pd.testing.assert_frame_equal(a.meta[cols], b.meta[cols])
    assert a.arrays.shape == b.arrays.shape
    for i in range(len(a)):  # the very pixels of the cache, byte for byte
        assert np.array_equal(a.arrays[int(a.meta["index"].iat[i])], b.arrays[int(b.meta["index"].iat[i])])
    marker = json.loads((lit / "skinlesion_litdata.json").read_text())
    assert marker["size"] == SIZE and marker["n"] == len(b) and marker["label_set"] == "ham10000"
    # the rest works on the chunks: info, split (done by the fixture), folds
    code, out, err = run_cli("info", lit)
    assert code == 0 and "litdata" in out, err
    from skinlesion.data.split import cv_folds

    assert len(set(cv_folds(a.meta, 3))) == 3


def _epoch(ds, split, where):
    """One epoch of (image_id, label, item bytes) from the train loader, and the val loader's, as training builds them."""
    from skinlesion.data.split import read_manifest
    from skinlesion.recipe import TrainConfig
    from skinlesion.train import build_loaders

    cfg = TrainConfig(
        data=str(ds.root),
        split=str(split),
        out="unused",
        backbone="resnet18",
        input_size=32,
        batch_size=256,
        num_workers=0,
        augment_on=where,
    )
    cfg, _, tr, va, train_loader, val_loader = build_loaders(cfg, ds, read_manifest(split))
    assert cfg.augment_on == where
    ids = ds.meta["image_id"].to_numpy()

    def items(loader):
        return collections.Counter((ids[int(p)], int(y), x.numpy().tobytes()) for batch in loader for x, y, p in zip(*batch[:3]))

    return type(train_loader.dataset).__name__, items(train_loader), items(val_loader), ids[tr], ids[va]


@pytest.mark.parametrize("where", ["device", "workers"])
def test_streamed_epoch_equals_the_cache_epoch(prepared, where):
    from skinlesion.data import load_dataset

    lit, cache, split = prepared
    kind_a, train_a, val_a, tr_a, va_a = _epoch(load_dataset(lit), split, where)
    kind_b, train_b, val_b, tr_b, va_b = _epoch(load_dataset(cache), split, where)
    assert kind_a == "StreamSet" and kind_b != "StreamSet"
    m = pd.read_csv(split)
    assert sorted(tr_a) == sorted(m.loc[m["split"] == "train", "image_id"]) and sorted(va_a) == sorted(va_b)
    assert sum(train_a.values()) == len(tr_a)  # one process: litdata drops nothing
    assert {k[0] for k in train_a} == set(tr_a)  # only the manifest's train ids
    # uint8 pixels (device) or augmented tensors (workers, seeded per image as the cache's): equal as multisets
    assert train_a == train_b
    assert val_a == val_b


RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from skinlesion.data import load_dataset
from skinlesion.data.split import read_manifest
from skinlesion.data.stream import StreamSet, stream_loader
from skinlesion.preprocess import Preprocess

dist.init_process_group("gloo")
lit, split, out, batch, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ds = load_dataset(lit)
m = read_manifest(split)
by_id = {i: p for p, i in enumerate(ds.meta["image_id"])}
tr = [by_id[i] for i in m.loc[m["split"] == "train", "image_id"]]
prep = Preprocess(input_size=32, source_size=ds.arrays.shape[1])
s = StreamSet(ds, tr, prep, mode="device", seed=7, batch_size=batch)
loader = stream_loader(s, batch, num_workers=workers, pin_memory=False, drop_last=True)
seen = [ds.meta["image_id"].iat[int(p)] for _, _, pos in loader for p in pos]
json.dump({"seen": seen, "len": len(s), "batches": len(loader)}, open(out, "w"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("batch,workers", [(4, 0), pytest.param(3, 2, marks=pytest.mark.slow)])  # 2 workers a rank: slow
def test_two_ddp_ranks_read_disjoint_parts(prepared, tmp_path, batch, workers):
    """gloo on CPU, two processes: litdata deals the shuffled chunk regions of the train ids to the ranks (and their
    DataLoader workers). Under DDP it drops the epoch's tail so that each rank gets (n // batch // 2) * batch items."""
    from tests.conftest import free_port

    lit, _, split = prepared
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "WORLD_SIZE": "2"}
        env.pop("GLOBAL_RANK", None)
        cmd = [sys.executable, str(script), str(lit), str(split), str(tmp_path / f"rank{rank}.json"), str(batch), str(workers)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    m = pd.read_csv(split)
    train = set(m.loc[m["split"] == "train", "image_id"])
    per_rank = (len(train) // batch // 2) * batch
    a, b = (r["seen"] for r in ranks)
    assert len(a) == len(b) == per_rank == ranks[0]["len"] == ranks[1]["len"]  # equal, whole batches, as len() says
    assert len(set(a)) == len(a) and len(set(b)) == len(b) and not set(a) & set(b)  # disjoint
    assert set(a) | set(b) <= train and len(train - (set(a) | set(b))) == len(train) - 2 * per_rank  # the tail, < 2 * batch
    assert len(train) - 2 * per_rank < 2 * batch


@pytest.mark.slow
def test_skinlesion_train_ddp_from_chunks(prepared, tmp_path):
    lit, _, split = prepared
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "skinlesion.cli", "train", str(lit), "--split", str(split), "--out", str(run), "--epochs", "1"]
    cmd += ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--record-shards", "--backbone", "resnet18"]
    cmd += ["--input-size", "32", "--batch-size", "4", "--no-progress", "--num-workers", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    shards = [set(map(int, (run / "shards" / f"rank{r}.txt").read_text().split())) for r in range(2)]
    m = pd.read_csv(split)
    n_train = int((m["split"] == "train").sum())
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == (n_train // 4 // 2) * 4
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [0] and int(metrics["val_n"].iloc[0]) == int((m["split"] == "val").sum())


# ---- refusals: one sentence, exit 2 ------------------------------------------------------------------


def _one_sentence(code, err):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err and "unexpected" not in err, err
    return lines[0]


def test_an_output_that_holds_chunks_is_refused_unless_forced(synth_kaggle, tmp_path, run_cli):
    out = tmp_path / "chunks"
    args = ["prepare", synth_kaggle, "--format", "litdata", "--size", "16", "--out", out]
    assert run_cli(*args)[0] == 0
    line = _one_sentence(*run_cli(*args)[::2])
    assert "already holds streaming chunks" in line and "--force" in line
    assert run_cli(*args, "--force")[0] == 0
    assert len(__import__("skinlesion").load_dataset(out)) == len(pd.read_csv(out / "meta.csv"))


def test_missing_or_damaged_marker_and_bad_options(prepared, synth_kaggle, tmp_path, run_cli):
    import shutil

    lit, _, split = prepared
    copy = tmp_path / "copy"
    shutil.copytree(lit, copy)
    (copy / "skinlesion_litdata.json").unlink()
    assert "no skinlesion_litdata.json" in _one_sentence(*run_cli("info", copy)[::2])
    (copy / "skinlesion_litdata.json").write_text("{not json")
    assert "damaged" in _one_sentence(*run_cli("info", copy)[::2])
    (copy / "skinlesion_litdata.json").write_text((lit / "skinlesion_litdata.json").read_text())
    (copy / "meta.csv").write_text("image_id\nx\n")
    assert "meta.csv is missing or damaged" in _one_sentence(*run_cli("info", copy)[::2])
    assert "Unknown --format" in _one_sentence(*run_cli("prepare", synth_kaggle, "--format", "tar", "--out", tmp_path / "x")[::2])
    assert "--chunk-mb" in _one_sentence(
        *run_cli("prepare", synth_kaggle, "--format", "litdata", "--chunk-mb", "0", "--out", tmp_path / "y")[::2]
    )
    code, _, err = run_cli("train", lit, "--split", split, "--out", tmp_path / "run", "--balance", "sampler", "--epochs", "1")
    assert "--balance sampler" in _one_sentence(code, err)


def test_litdata_not_installed(synth_kaggle, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "litdata", None)  # import litdata raises ImportError
    line = _one_sentence(*run_cli("prepare", synth_kaggle, "--format", "litdata", "--out", tmp_path / "c")[::2])
    assert "litdata package, which is not installed" in line


def test_an_object_store_url_goes_to_litdata_as_it_is(synth_kaggle, run_cli, monkeypatch):
    import litdata

    seen = {}

    def offline(fn, inputs, output_dir, **kw):
        seen["output_dir"] = output_dir
        raise ConnectionError("Could not connect to the endpoint URL: https://bucket.s3.amazonaws.com/\nretries exhausted")

    monkeypatch.setattr(litdata, "optimize", offline)
    line = _one_sentence(*run_cli("prepare", synth_kaggle, "--format", "litdata", "--size", "16", "--out", "s3://bucket/ham")[::2])
    assert seen["output_dir"] == "s3://bucket/ham"  # not a local path made of it
    assert "litdata could not write the chunks to s3://bucket/ham (Could not connect" in line


def test_reading_chunks_from_an_object_store_asks_litdata_for_that_url(run_cli, monkeypatch):
    import litdata.streaming.fs_provider as fs_provider

    asked = []

    class Offline:
        def download_file(self, remote, local):
            asked.append(remote)
            raise ConnectionError("Could not connect to the endpoint URL")

    monkeypatch.setattr(fs_provider, "_get_fs_provider", lambda url, *a, **k: asked.append(url) or Offline())
    line = _one_sentence(*run_cli("info", "s3://bucket/ham")[::2])  # typer's Path makes it s3:/bucket/ham: still the URL
    assert asked[:2] == ["s3://bucket/ham", "s3://bucket/ham/meta.csv"]
    assert "Could not read the chunks' skinlesion_litdata.json at s3://bucket/ham (Could not connect" in line


def test_chunks_written_to_a_url_get_their_meta_and_marker_beside_them(synth_kaggle, run_cli, monkeypatch):
    import litdata
    import litdata.streaming.fs_provider as fs_provider

    uploaded = {}

    class Store:
        def upload_file(self, local, remote):
            uploaded[remote] = open(local).read()

    monkeypatch.setattr(litdata, "optimize", lambda fn, inputs, output_dir, **kw: None)
    monkeypatch.setattr(fs_provider, "_get_fs_provider", lambda url, *a, **k: Store())
    code, _, err = run_cli("prepare", synth_kaggle, "--format", "litdata", "--size", "16", "--out", "gs://bucket/ham/")
    assert code == 0, err
    assert list(uploaded) == ["gs://bucket/ham/meta.csv", "gs://bucket/ham/skinlesion_litdata.json"]  # the marker last
    assert json.loads(uploaded["gs://bucket/ham/skinlesion_litdata.json"])["size"] == 16

    class Offline:
        def upload_file(self, local, remote):
            raise PermissionError("Access denied")

    monkeypatch.setattr(fs_provider, "_get_fs_provider", lambda url, *a, **k: Offline())
    line = _one_sentence(*run_cli("prepare", synth_kaggle, "--format", "litdata", "--size", "16", "--out", "gs://bucket/ham")[::2])
    assert "could not be written (Access denied); rerun with --force" in line


# ---- issue 28: a full disk, Ctrl-C, an unfinished folder ------------------------------------------------

CLI = [sys.executable, "-m", "skinlesion.cli"]


def _env():
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _session_alive(sid: int) -> list[int]:
    """Processes (other than zombies) still in session ``sid``: what a command left running behind it."""
    alive = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            alive.append(int(d))
    return alive


def _wait_for(cond, timeout=60.0):
    import time

    t = time.time()
    while time.time() - t < timeout:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _tmpfs(path, size: str):
    import shutil

    path.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("a real full disk needs a small tmpfs; mount is not available here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"a real full disk needs a small tmpfs, and this user cannot mount one ({r.stderr.strip()})")


@pytest.mark.slow
def test_prepare_litdata_on_a_full_disk_exits_2_in_one_sentence_and_leaves_nothing_running(synth_kaggle, tmp_path):
    """59 images at 160 px (77 KB each, 4.5 MB) onto a 3 MB tmpfs: it once ran 900 s without ending."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "3m")
    out = disk / "chunks"
    try:
        proc = subprocess.Popen(
            [*CLI, "prepare", str(synth_kaggle), "--format", "litdata", "--size", "160", "--chunk-mb", "0.5", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            start_new_session=True,  # its own session: every process it starts stays in it
        )
        try:
            _, err = proc.communicate(timeout=180)  # bounded: a hang fails here instead of blocking the suite
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            pytest.fail("prepare --format litdata on a full disk did not end within 180 s")
        assert proc.returncode == 2, (proc.returncode, err)
        assert _wait_for(lambda: not _session_alive(proc.pid), 10), f"left running: {_session_alive(proc.pid)}"
        line = _one_sentence(proc.returncode, err)
        assert "No space left on device" in line and "free some space" in line, line
        assert not [p for p in out.iterdir() if p.suffix == ".bin"]  # the space of the failed write is given back
        r = subprocess.run([*CLI, "info", str(out)], capture_output=True, text=True, env=_env())
        assert r.returncode == 2 and "an unfinished `prepare --format litdata`: rerun it with --force" in r.stderr, r.stderr
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_ctrl_c_during_prepare_litdata_exits_130_and_marks_the_folder_unfinished(synth_kaggle, tmp_path):
    """litdata's optimize ended the process with os._exit(0) on SIGINT; a signal sent while it is held at its 11th image."""
    out, held = tmp_path / "chunks", tmp_path / "held"
    code = (
        "import signal\n"
        "from pathlib import Path\n"
        "from skinlesion.data.ham10000 import Dataset\n"
        "from skinlesion.cli import main\n"
        "real, seen = Dataset.image, [0]\n"
        "def image(self, i):\n"
        "    if seen[0] == 10:\n"
        f"        Path({str(held)!r}).write_text('held')\n"
        "        while True:\n"
        "            signal.pause()\n"
        "    seen[0] += 1\n"
        "    return real(self, i)\n"
        "Dataset.image = image\n"
        f"main(['prepare', {str(synth_kaggle)!r}, '--format', 'litdata', '--size', '32', '--chunk-mb', '0.01', '--out', {str(out)!r}])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)
    try:
        assert _wait_for(lambda: held.exists() or proc.poll() is not None, 120), "prepare never reached its 11th image"
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(2)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 130, (proc.returncode, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted") and "unfinished `prepare --format litdata`: rerun it with --force" in last, err
    assert "Traceback" not in err
    assert _wait_for(lambda: not _session_alive(proc.pid), 10)
    from skinlesion.data import load_dataset
    from skinlesion.errors import SkinLesionError

    with pytest.raises(SkinLesionError, match="an unfinished `prepare --format litdata`: rerun it with --force"):
        load_dataset(out)


def test_half_written_chunks_are_told_they_are_unfinished(prepared, tmp_path, run_cli):
    """Chunks with no index.json and no marker (a copy cut short): not "No HAM10000_metadata.csv found"."""
    import shutil

    lit, _, _ = prepared
    half = tmp_path / "half"
    half.mkdir()
    for p in sorted(lit.glob("chunk-*.bin"))[:3]:
        shutil.copy(p, half / p.name)
    line = _one_sentence(*run_cli("info", half)[::2])
    assert "an unfinished `prepare --format litdata`: rerun it with --force" in line and "HAM10000_metadata" not in line, line
