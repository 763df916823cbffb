"""Shared fixtures: the real data beside the checkout, synthetic datasets, CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKINLESION_SHARED_DATA", REPO.parent / "shared" / "data"))


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


@pytest.fixture
def run_cli(capsys):
    """Run the skinlesion CLI in-process; return (exit_code, stdout, stderr)."""
    from skinlesion.cli import main

    def run(*args: str):
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    return run
