"""Shared fixtures: the real data beside the checkout, synthetic datasets, CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKINLESION_SHARED_DATA", REPO.parent / "shared" / "data"))


def benchmark(name: str):
    """The script ``benchmarks/NAME.py`` imported as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data {p} is absent (tests read it from ../shared/data beside the checkout)")
    return p


@pytest.fixture(scope="session")
def synth_kaggle(tmp_path_factory) -> Path:
    """A small synthetic HAM10000 dataset in the Kaggle layout, full 600x450 JPEGs."""
    from skinlesion.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synth_kaggle"), n_lesions=40, layout="kaggle", seed=1)


def _rebind_closed_log_streams() -> None:
    """Lightning adds a StreamHandler on sys.stderr when it is first imported; imported inside a test, that is
    the test's capture stream, closed once the test ends, and a later log line would print a logging error
    into another test's stderr. Point such handlers at the current stderr (the running test's capture)."""
    import logging
    import sys

    loggers = [logging.getLogger()] + [v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    for logger in loggers:
        for h in logger.handlers:
            if type(h) is logging.StreamHandler and getattr(h.stream, "closed", False):
                h.stream = sys.stderr  # not setStream: it flushes the closed stream first


@pytest.fixture
def run_cli(capsys):
    """Run the skinlesion CLI in-process; return (exit_code, stdout, stderr)."""
    from skinlesion.cli import main

    def run(*args: str):
        _rebind_closed_log_streams()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A small separable synthetic dataset (96x72 images), its lesion split, and a model trained on it."""
    from skinlesion.data import load_dataset, make_split
    from skinlesion.data.synthetic import write_synthetic
    from skinlesion.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny_run")
    data = write_synthetic(root / "data", n_lesions=110, layout="flat", size=(96, 72), seed=3, min_per_class=10)
    report = make_split(load_dataset(data).meta, fractions=(0.6, 0.2, 0.2), seed=0)
    report.manifest.to_csv(root / "split.csv", index=False)
    cfg = TrainConfig(
        data=str(data),
        split=str(root / "split.csv"),
        out=str(root / "run"),
        backbone="resnet18",
        input_size=32,
        epochs=10,
        batch_size=16,
        lr=3e-3,
        patience=10,
        progress=False,
        num_workers=0,
        balance="sqrt",
    )
    train(cfg)
    return data, root / "split.csv", root / "run"


@pytest.fixture(scope="session")
def default_model():
    """The shipped model, or skip if this checkout has none yet."""
    from skinlesion.bundle import default_model_path

    p = default_model_path()
    if not p.exists():
        pytest.skip("the shipped default model is not in this checkout")
    return p


@pytest.fixture(scope="session")
def tiny_cv(tmp_path_factory):
    """A 3-fold cross-validated ensemble (with patient data forced on) on a small separable synthetic set."""
    from skinlesion.cv import train_cv
    from skinlesion.data.synthetic import write_synthetic
    from skinlesion.train import TrainConfig

    root = tmp_path_factory.mktemp("tiny_cv")
    data = write_synthetic(root / "data", n_lesions=90, layout="flat", size=(96, 72), seed=5, min_per_class=8)
    cfg = TrainConfig(
        data=str(data),
        split="",
        out=str(root / "run"),
        backbone="resnet18",
        input_size=32,
        epochs=3,
        batch_size=16,
        lr=3e-3,
        patience=10,
        progress=False,
        num_workers=0,
    )
    train_cv(cfg, 3, metadata="yes")
    return data, root / "run"


# tests that train or evaluate a real model: `make test-fast` leaves them out (they still run in `make test`)
SLOW_FIXTURES = {"tiny_run", "tiny_cv", "default_model", "shipped", "cache", "app_test"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class running_app:
    """``skinlesion app`` on a free local port, healthy on entry, stopped (with its Streamlit child) on exit.

    ``with running_app(tmp_path, "--sample", img) as (server, port): ...``; its log is ``tmp_path/server.log``.
    """

    def __init__(self, tmp_path: Path, *args: str, timeout: float = 60.0):
        self.tmp_path, self.args, self.timeout = tmp_path, [str(a) for a in args], timeout

    def __enter__(self):
        import subprocess
        import sys
        import time
        import urllib.request

        self.port = free_port()
        self.log = open(self.tmp_path / "server.log", "w")
        cmd = [sys.executable, "-m", "skinlesion.cli", "app", "--port", str(self.port), "--address", "127.0.0.1", *self.args]
        self.server = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health", timeout=1).read() == b"ok":
                    return self.server, self.port
            except OSError:
                pass
            if self.server.poll() is not None or time.time() - t0 > self.timeout:
                self.__exit__()
                raise AssertionError(f"the app did not answer /_stcore/health:\n{(self.tmp_path / 'server.log').read_text()}")
            time.sleep(0.2)

    def __exit__(self, *exc):
        import signal
        import subprocess

        try:
            os.killpg(self.server.pid, signal.SIGTERM)  # the server and the Streamlit under it
            self.server.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
        self.log.close()
        return False
