"""``train --resume`` of a run that needs no resuming (issue 28): a finished run says it is already complete and
changes nothing; one whose checkpoints/ is gone is refused (its models are the result) unless --force."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def finished(tiny_run, tmp_path):
    _, _, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert (copy / "val_metrics.json").is_file() and (copy / "checkpoints" / "last.ckpt").is_file()
    return copy


def _stamp(run):
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}


def test_resuming_a_finished_run_says_it_is_already_complete_and_changes_nothing(finished, run_cli):
    before = _stamp(finished)
    code, out, err = run_cli("train", "--resume", "--out", finished)
    assert code == 0, err
    assert "already complete" in out and "nothing to resume" in out, out
    assert _stamp(finished) == before


def test_a_finished_run_without_its_checkpoints_is_refused_unless_forced(finished, run_cli):
    shutil.rmtree(finished / "checkpoints")
    before = _stamp(finished)
    code, out, err = run_cli("train", "--resume", "--out", finished)
    assert code == 2 and "Traceback" not in err, err
    assert "already complete but no checkpoints/last.ckpt" in err and "--force" in err and "replace its models" in err, err
    assert _stamp(finished) == before  # its models untouched


def test_epochs_without_a_checkpoint_are_refused_and_force_needs_resume(finished, run_cli):
    shutil.rmtree(finished / "checkpoints")
    (finished / "val_metrics.json").unlink()  # stopped before the end: finished epochs, no checkpoint
    code, _, err = run_cli("train", "--resume", "--out", finished)
    assert code == 2 and "finished epoch(s) in metrics.csv" in err and "--force" in err, err
    code, _, err = run_cli("train", "--out", finished.parent / "new", "--force")
    assert code == 2 and "--force goes with --resume" in err, err
