"""Thread pools sized to the cores a process may use, and no spin-waiting (issue 18: threads under load)."""

from __future__ import annotations

import os

import pytest


def test_threads_are_the_usable_cores_divided_by_the_requests_served_at_once(monkeypatch):
    from skinlesion import runtime

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: None)
    assert runtime.usable_cores() == 4 and runtime.threads_for(1) == 4 and runtime.threads_for(2) == 2 and runtime.threads_for(16) == 1
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: 1.5)  # a container allowed 1.5 CPUs
    assert runtime.usable_cores() == 1


def test_passive_waits_only_fills_in_what_the_user_did_not_set(monkeypatch):
    from skinlesion.runtime import passive_waits

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    passive_waits()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    passive_waits()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_onnx_predictor_sizes_its_pool_and_never_spins(default_model, monkeypatch):
    from skinlesion import runtime
    from skinlesion.bundle import onnx_for
    from skinlesion.predict import Predictor

    if onnx_for("default") is None:
        pytest.skip("the shipped model's ONNX export is not built (make install builds it)")
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    p = Predictor("default", concurrency=2)
    opts = p.session.get_session_options()
    assert p.backend == "onnx" and p.threads == 2 and opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert Predictor("default", threads=1).session.get_session_options().intra_op_num_threads == 1
