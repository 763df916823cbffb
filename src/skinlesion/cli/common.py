"""What every verb group shares: the console (``say``, ``warn``), the progress bar, atomic CSV writes,
the ``--on-conflict`` of combined datasets."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from ..errors import SkinLesionError


def _say(msg: str) -> None:
    typer.echo(msg)


def _warn(msg: str) -> None:
    typer.echo(f"warning: {msg}", err=True)


class _progress:
    """A progress bar on the terminal (stderr) for work over many images: ``progress(done, total)``.

    Drawn only where stderr is a terminal, so logs and pipes get no control characters.
    """

    def __init__(self, label: str, *, stream=None):
        self.label, self.stream = label, stream or sys.stderr
        self.shown = False

    def __enter__(self):
        return self

    def __call__(self, done: int, total: int) -> None:
        if total < 2 or not self.stream.isatty():
            return
        width = 30
        filled = int(width * done / total)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        self.stream.flush()
        self.shown = True

    def __exit__(self, *exc):
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
        return False


def write_csv(table, out: Path) -> None:
    """Write a table atomically: a temporary file in the same folder, renamed; nothing left on failure."""
    from ..errors import atomic_write

    if out.is_dir():
        raise SkinLesionError(f"--out {out} is a folder; pass a file name such as {out / 'predictions.csv'}.")
    atomic_write(out, lambda t: table.to_csv(t, index=False))


class OnConflict(str, Enum):
    keep_first = "keep-first"
    drop = "drop"


ON_CONFLICT_HELP = (
    "Several DATA combined: an image id a later dataset gives another diagnosis keeps the first dataset's label "
    "(keep-first, the default) or is left out of both (drop); the conflicts are counted and named either way."
)


def on_conflict_of(data, on_conflict: OnConflict | None) -> str:
    """``--on-conflict`` as :func:`skinlesion.data.load_dataset` takes it; refused with one dataset (nothing combines)."""
    if on_conflict is None:
        return "keep-first"
    if len(data or []) < 2:
        raise SkinLesionError("--on-conflict decides between combined datasets; give two or more DATA, or leave it out.")
    return on_conflict.value
