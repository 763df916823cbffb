"""Thread pools sized to the cores this process may use, and no spin-waiting.

On a shared machine an intra-op thread pool larger than the cores a process really gets, or
threads that spin while they wait for work, turn a 0.4 s heat map into tens of seconds beside a
busy neighbour. So every entry point that runs a network asks :func:`threads_for` how many
threads to give each request: the usable cores (CPU affinity, and the cgroup's CPU quota where
one is set) divided by the number of requests it serves at once. :func:`passive_waits` asks
OpenMP (torch's intra-op pool) not to spin, and :func:`ort_session_options` asks ONNX Runtime
the same; it must run before torch is imported, which the CLI and the app do first thing.
"""

from __future__ import annotations

import math
import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2/v1 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "max 100000" or "200000 100000"
            q, period = f.read().split()[:2]
            return None if q == "max" else int(q) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
            q, period = int(f.read()), int(g.read())
            return None if q <= 0 else q / period
    except (OSError, ValueError):
        return None


def threads_for(concurrency: int = 1) -> int:
    """Intra-op threads per request when ``concurrency`` requests run at once (at least one)."""
    return max(1, usable_cores() // max(1, int(concurrency)))


def passive_waits() -> None:
    """Ask OpenMP (torch's CPU thread pool) to sleep, not spin, while it waits; only before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def ort_session_options(threads: int):
    """ONNX Runtime session options: ``threads`` intra-op threads, one inter-op, no spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts
