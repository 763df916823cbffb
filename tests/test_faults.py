"""Faults: kills at chosen moments, Ctrl-C, a full disk (issue: reliability, defects 3, 5, 6)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CLI = [sys.executable, "-m", "skinlesion.cli"]


def _many(src: Path, dest: Path, copies: int) -> Path:
    """A HAM10000 folder of ``copies`` x the images of ``src`` (file copies: quick to make, slow enough to prepare)."""
    meta = pd.read_csv(src / "HAM10000_metadata.csv")
    files = {p.stem: p for p in src.rglob("*.jpg")}
    (dest / "images").mkdir(parents=True)
    rows = []
    for k in range(copies):
        for _, r in meta.iterrows():
            image_id = f"ISIC_{len(rows):07d}"
            shutil.copy(files[r["image_id"]], dest / "images" / f"{image_id}.jpg")
            rows.append({**r.to_dict(), "image_id": image_id, "lesion_id": f"{r['lesion_id']}_{k}"})
    pd.DataFrame(rows).to_csv(dest / "HAM10000_metadata.csv", index=False)
    return dest


@pytest.fixture(scope="module")
def big(synth_kaggle, tmp_path_factory):
    return _many(synth_kaggle, tmp_path_factory.mktemp("big"), 12)


def _wait_for(cond, timeout=60.0):
    t = time.time()
    while time.time() - t < timeout:
        if cond():
            return True
        time.sleep(0.01)
    return False


def _done(cache: Path) -> int:
    try:
        return int(json.loads((cache / "cache.json").read_text())["done"])
    except (OSError, ValueError, KeyError):
        return -1


def _prepare_held_at(image: int, data: Path, cache: Path, marker: Path) -> subprocess.Popen:
    """``skinlesion prepare DATA --out CACHE --size 128`` in a subprocess whose image reader, asked for image number
    ``image`` (counting from 0), writes ``marker`` and waits for a signal (``signal.pause``): a run that cannot finish
    before the test acts on it, so a signal or a kill sent once the marker exists interrupts it, on any machine."""
    code = (
        "import signal, sys\n"
        "from pathlib import Path\n"
        "from skinlesion.data.ham10000 import Dataset\n"
        "from skinlesion.cli import main\n"
        "real, seen = Dataset.image, [0]\n"
        "def held(self, i):\n"
        f"    if seen[0] == {image}:\n"
        f"        Path({str(marker)!r}).write_text('held')\n"
        "        while True:\n"
        "            signal.pause()\n"
        "    seen[0] += 1\n"
        "    return real(self, i)\n"
        "Dataset.image = held\n"
        f"main(['prepare', {str(data)!r}, '--out', {str(cache)!r}, '--size', '128'])\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def test_prepare_killed_after_its_array_is_complete_resumes_to_the_same_cache(big, tmp_path):
    """SIGKILL once the first chunk is on disk: the rerun resumes and the cache equals an uninterrupted one."""
    from skinlesion.data import load_dataset
    from skinlesion.data.prepare import CHUNK, prepare

    n = len(pd.read_csv(big / "HAM10000_metadata.csv"))
    assert n > CHUNK
    cache, marker = tmp_path / "cache", tmp_path / "held"
    proc = _prepare_held_at(CHUNK, big, cache, marker)  # held at the first image of the second chunk
    assert _wait_for(lambda: marker.exists() or proc.poll() is not None), "prepare never reached its second chunk"
    assert proc.poll() is None, proc.communicate()[1]
    proc.kill()
    proc.wait()
    assert _done(cache) == CHUNK  # the first chunk was saved, nothing after it
    state = prepare(big, cache, 128, progress=False)
    assert state["done"] == n
    ref = prepare(big, tmp_path / "ref", 128, progress=False)
    assert ref["done"] == n
    assert np.array_equal(load_dataset(cache).arrays, load_dataset(tmp_path / "ref").arrays)


def test_prepare_killed_before_its_array_was_complete_starts_that_cache_again(big, tmp_path, run_cli):
    """A cache whose array file never reached its size (killed while it was being made) is restarted, not stuck."""
    cache = tmp_path / "cache"
    code, _, err = run_cli("prepare", big, "--out", cache, "--size", "32")
    assert code == 0, err
    good = np.load(cache / "images.npy").copy()
    # the state a kill during the array's creation left with the first version: state written, array short
    with open(cache / "images.npy", "r+b") as f:
        f.truncate(200)
    state = json.loads((cache / "cache.json").read_text())
    (cache / "cache.json").write_text(json.dumps({**state, "done": 0}))
    code, _, err = run_cli("prepare", big, "--out", cache, "--size", "32")
    assert code == 0, err
    assert "never completed" in err
    assert np.array_equal(np.load(cache / "images.npy"), good)


def test_prepare_ctrl_c_exits_130_with_one_line(big, tmp_path):
    """Ctrl-C while prepare works (held at its 11th image, so the signal cannot come after the end): exit 130, one line.

    It once raced: a fresh machine prepared all 708 images before the signal arrived and exited 0."""
    cache, marker = tmp_path / "cache", tmp_path / "held"
    proc = _prepare_held_at(10, big, cache, marker)
    assert _wait_for(lambda: marker.exists() or proc.poll() is not None), "prepare never started on its images"
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert _done(cache) == 0  # nothing half-written was counted as done


def test_prepare_on_a_full_disk_is_one_sentence_and_leaves_no_array(big, tmp_path, monkeypatch, run_cli):
    """Where the space cannot be reserved the run stops at once, in one sentence, before a SIGBUS can happen."""

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    cache = tmp_path / "cache"
    code, _, err = run_cli("prepare", big, "--out", cache, "--size", "128")
    assert code == 2
    assert "Could not reserve" in err and "MiB" in err and "No space left" in err
    assert "Traceback" not in err and "unexpected" not in err
    assert not (cache / "images.npy").exists() and not (cache / "images.npy.tmp").exists()


def _tmpfs(path: Path, size: str):
    path.mkdir()
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("a real full disk needs a small tmpfs; mount is not available here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"a real full disk needs a small tmpfs, and this user cannot mount one ({r.stderr.strip()})")


def test_prepare_on_a_real_full_tmpfs_exits_2_without_sigbus(big, tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "2m")  # the cache needs 12 x ~60 images x 128 x 128 x 3 bytes, about 35 MiB
    try:
        r = subprocess.run([*CLI, "prepare", str(big), "--out", str(disk / "cache"), "--size", "128"], capture_output=True, text=True)
        assert r.returncode == 2, (r.returncode, r.stderr)  # SIGBUS would be -7 (135 from a shell)
        assert "Could not reserve" in r.stderr or "Could not write" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (disk / "cache" / "images.npy").exists()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_app_on_a_port_in_use_exits_2_in_one_sentence(run_cli):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, _, err = run_cli("app", "--port", port, "--address", "127.0.0.1")
    assert code == 2
    assert f"Port {port} on 127.0.0.1 is in use" in err and "--port" in err
    code, _, err = run_cli("app", "--port", 70000)
    assert code == 2 and "out of range" in err


def test_sigterm_to_the_app_stops_the_streamlit_server_it_started(default_model, tmp_path):
    import socket

    from .conftest import running_app

    with running_app(tmp_path) as (server, port):
        server.send_signal(signal.SIGTERM)  # to skinlesion alone, as a service manager would
        assert server.wait(timeout=30) == 128 + signal.SIGTERM

        def nobody_listens():  # (binding would also wait out the health checks' TIME_WAIT sockets)
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) != 0

        assert _wait_for(nobody_listens, 20), "the Streamlit server kept running after skinlesion app was stopped"


def _tiny_cfg(data, split, out, **kw):
    from skinlesion.train import TrainConfig

    base = dict(backbone="resnet18", input_size=32, epochs=2, batch_size=16, lr=3e-3, patience=10, progress=False, num_workers=0)
    return TrainConfig(data=str(data), split=str(split), out=str(out), **{**base, **kw})


def _weights(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_train_killed_between_metrics_row_and_checkpoint_resumes_to_the_uninterrupted_weights(tiny_run, tmp_path, monkeypatch):
    """The second kill moment: epoch 1's metrics row is written, its checkpoint is not. The resumed run
    rewrites that row once (metrics.csv epochs 0, 1) and ends with the weights of a run never stopped,
    though it resumes with DataLoader workers where the reference had none (order and augmentation
    are seeded from seed, epoch and image, not from the process that draws them)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from skinlesion.train import train

    data, split, _ = tiny_run
    ref = train(_tiny_cfg(data, split, tmp_path / "ref"), finish_model=False)

    class Killed(BaseException):
        pass

    real = ModelCheckpoint._save_checkpoint

    def save_then_die(self, trainer, filepath):
        if trainer.current_epoch == 1:
            raise Killed  # after ExportModels appended epoch 1's row, before last.ckpt holds epoch 1
        return real(self, trainer, filepath)

    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", save_then_die)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        train(_tiny_cfg(data, split, run), finish_model=False)
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [0, 1]
    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", real)
    train(_tiny_cfg(data, split, run, num_workers=2), resume=True, finish_model=False)
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [0, 1]
    assert (run / "checkpoints" / "last.ckpt").exists()
    a, b = _weights(ref / "last.safetensors"), _weights(run / "last.safetensors")
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst < 1e-5, f"resumed weights differ from the uninterrupted run's by {worst}"


def test_app_load_benchmark_two_sessions_get_their_own_answers(default_model, tmp_path):
    """benchmarks/app_load.py over the real websocket protocol: two sessions, different images, no mix-up."""
    from .conftest import benchmark, shared

    app_load = benchmark("app_load")

    images = [str(shared("fullres", "ISIC_0024310.jpg")), str(sorted(shared("dermamnist28", "images").glob("*.jpg"))[0])]
    r = app_load.main(["--sessions", "2", "--seconds", "4", "--images", *images, "--json", str(tmp_path / "load.json")])
    assert r["uploads"] >= 2 and r["errors"] == 0, r["error_examples"]
    assert r["answers_differing_from_single_session"] == 0
    assert all(n >= 5 for n in r["reference_answer_lines"].values())  # the page showed an analysis for each image
    assert r["server_rss_peak_mib"] > 50


# ---- issue 18: resume before the first checkpoint, full disks, Ctrl-C, a second evaluate, read-only --out ----


def test_train_killed_after_epoch_0s_row_before_any_checkpoint_resumes_from_epoch_0_once(tiny_run, tmp_path, monkeypatch, capsys):
    """The first kill window: epoch 0's metrics row is written, no checkpoint exists yet. The resume says so,
    runs epoch 0 again, and metrics.csv ends with epochs 0, 1 once each; the weights equal an uninterrupted run's."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from skinlesion.train import train

    data, split, _ = tiny_run
    ref = train(_tiny_cfg(data, split, tmp_path / "ref"), finish_model=False)

    class Killed(BaseException):
        pass

    real = ModelCheckpoint._save_checkpoint

    def die(self, trainer, filepath):
        raise Killed  # epoch 0's row and bundles are written; last.ckpt never is

    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", die)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        train(_tiny_cfg(data, split, run), finish_model=False)
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [0] and not (run / "checkpoints" / "last.ckpt").exists()
    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", real)
    capsys.readouterr()
    train(_tiny_cfg(data, split, run), resume=True, finish_model=False)
    assert "no checkpoint yet: starting from epoch 0" in capsys.readouterr().out
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [0, 1]
    a, b = _weights(ref / "last.safetensors"), _weights(run / "last.safetensors")
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst < 1e-5, f"resumed weights differ from the uninterrupted run's by {worst}"


def _train_args(data, split, out, epochs=2):
    return ["train", data, "--split", split, "--out", out, "--backbone", "resnet18", "--input-size", "32", "--epochs", str(epochs)] + [
        "--batch-size", "16", "--lr", "3e-3", "--patience", "10", "--no-progress", "--num-workers", "0",
    ]  # fmt: skip


def test_train_on_a_full_disk_is_one_sentence_and_resumes_once_space_is_freed(tiny_run, tmp_path, run_cli):
    data, split, _ = tiny_run
    disk = tmp_path / "disk"
    _tmpfs(disk, "150m")  # one resnet18 bundle is 45 MB, a checkpoint with its optimiser 134 MB: epoch 0 cannot be saved whole
    try:
        out = disk / "run"
        code, _, err = run_cli(*_train_args(data, split, out))
        assert code == 2, err
        assert "Training stopped: could not write into" in err and "No space left on device" in err, err
        assert f"skinlesion train --resume --out {out}" in err and "Traceback" not in err and "unexpected" not in err
        assert not [p for p in out.rglob("*.tmp")], "a half-written file was left behind"
        subprocess.run(["mount", "-o", "remount,size=1g", str(disk)], check=True)  # space is freed
        code, out_text, err = run_cli("train", "--resume", "--out", out)
        assert code == 0, err
        assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [0, 1]  # every epoch once
        assert (out / "best.safetensors").exists() and (out / "val_metrics.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_export_on_a_full_disk_is_one_sentence_and_leaves_nothing(tiny_run, tmp_path, run_cli):
    data, _, run = tiny_run
    disk = tmp_path / "disk"
    _tmpfs(disk, "20m")  # the resnet18 export is 45 MB
    try:
        code, _, err = run_cli("export", run, "--out", disk / "model.onnx")
        assert code == 2, err
        assert f"Could not write {disk / 'model.onnx'}" in err and "free some space or choose another --out" in err
        assert "Traceback" not in err and "unexpected" not in err
        assert list(disk.iterdir()) == [], "a partial export was left behind"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_read_only_out_is_told_it_cannot_be_written(tiny_run, tmp_path, run_cli):
    data, split, run = tiny_run
    ro = tmp_path / "ro"
    _tmpfs(ro, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        code, _, err = run_cli("split", data, "--out", ro / "split.csv")
        assert code == 2 and "the file system is read-only" in err and "free some space" not in err, err
        img = sorted((data / "images").glob("*.jpg"))[0]
        code, _, err = run_cli("predict", run, img, "--out", ro / "p.csv")
        assert code == 2 and "read-only" in err and "free some space" not in err, err
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_ctrl_c_during_train_exits_130_and_resume_completes(tiny_run, tmp_path):
    data, split, _ = tiny_run
    out = tmp_path / "run"
    env = {**os.environ, "SKINLESION_TEST_HOLD_AFTER_EPOCH": "0"}  # epoch 0 is saved, epoch 1 waits: a state, not a moment
    proc = subprocess.Popen([*CLI, *map(str, _train_args(data, split, out, epochs=3))], stderr=subprocess.PIPE, text=True, env=env)
    assert _wait_for(lambda: (out / ".held").exists() or proc.poll() is not None, 300), "training never reached the hold point"
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; continue with `skinlesion train --resume --out" in err and "Traceback" not in err, err
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [0]
    r = subprocess.run([*CLI, "train", "--resume", "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [0, 1, 2]


def test_a_second_evaluate_into_a_folder_being_written_is_refused(tiny_run, tmp_path, run_cli):
    from skinlesion.errors import lock_folder

    data, split, run = tiny_run
    held = lock_folder(tmp_path / "ev", "evaluation")  # as a running evaluate holds it
    try:
        code, _, err = run_cli("evaluate", "-m", run, "-d", data, "--split", split, "-o", tmp_path / "ev")
        assert code == 2 and "Another skinlesion evaluation is writing into" in err, err
    finally:
        held.release()
    code, _, err = run_cli("evaluate", "-m", run, "-d", data, "--split", split, "-o", tmp_path / "ev")
    assert code == 0, err
