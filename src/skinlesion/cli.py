"""The ``skinlesion`` command. Heavy libraries are imported inside each verb."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .errors import SkinLesionError

app = typer.Typer(
    help="Classify dermatoscopic images into the seven HAM10000 diagnoses.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _say(msg: str) -> None:
    typer.echo(msg)


def _warn(msg: str) -> None:
    typer.echo(f"warning: {msg}", err=True)


class SplitKind(str, Enum):
    lesion = "lesion"
    image = "image"
    official = "official"


class Source(str, Enum):
    ham10000 = "ham10000"
    dermamnist = "dermamnist"


@app.command()
def info(
    data: Path = typer.Argument(..., help="HAM10000 folder, metadata CSV, DermaMNIST .npz or prepared cache."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Drop metadata rows whose image is missing."),
    quick: bool = typer.Option(False, "--quick", help="Do not decode every image to look for corrupt files."),
) -> None:
    """Describe a dataset: images per class, lesions, metadata coverage, problems."""
    from .data.describe import describe
    from .data.ham10000 import check_images, load_dataset

    ds = load_dataset(data, allow_missing=allow_missing)
    problems = [] if quick else check_images(ds)
    _say(describe(ds, problems))
    for w in ds.warnings:
        _warn(w)
    if problems:
        raise SkinLesionError(
            f"{len(problems)} image file(s) cannot be read (first: {problems[0]}); "
            "re-download them or remove their rows from the metadata."
        )


@app.command()
def split(
    data: Path = typer.Argument(..., help="HAM10000 folder, metadata CSV or DermaMNIST .npz."),
    out: Path = typer.Option(Path("split.csv"), "--out", "-o", help="Where to write the manifest CSV."),
    kind: SplitKind = typer.Option(SplitKind.lesion, "--kind", help="lesion (default, leak-free), image (leaky reference), official (DermaMNIST)."),
    train: float = typer.Option(0.70, help="Train fraction."),
    val: float = typer.Option(0.10, help="Validation fraction."),
    test: float = typer.Option(0.20, help="Test fraction."),
    seed: int = typer.Option(42, help="Random seed."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Drop metadata rows whose image is missing."),
) -> None:
    """Write a split manifest (image_id,lesion_id,dx,split); lesion-grouped and stratified by default."""
    from .data.ham10000 import load_dataset, read_metadata
    from .data.split import make_split

    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".csv":
        meta = read_metadata(path)  # a split needs only the metadata, not the pixels
        official = path.parent / "dermamnist_split.csv"
        if official.exists() and "split" not in meta.columns:
            import pandas as pd

            meta = meta.merge(pd.read_csv(official, dtype={"image_id": str})[["image_id", "split"]], on="image_id", how="left")
    else:
        ds = load_dataset(path, allow_missing=allow_missing)
        for w in ds.warnings:
            _warn(w)
        meta = ds.meta
    report = make_split(meta, kind=kind.value, fractions=(train, val, test), seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    report.manifest.to_csv(out, index=False)
    _say(report.table())
    _say(f"\nwrote {out} ({len(report.manifest)} images, kind={report.kind}, seed={seed})")


@app.command()
def download(
    source: Source = typer.Argument(..., help="ham10000 (Kaggle, via kagglehub) or dermamnist (medmnist)."),
    to: Path = typer.Option(..., "--to", help="Folder to put the data in."),
) -> None:
    """Download HAM10000 or DermaMNIST (needs internet; offline it says how to get the data by hand)."""
    from .data import download as dl

    path = dl.download_ham10000(to) if source is Source.ham10000 else dl.download_dermamnist(to)
    _say(f"downloaded {source.value} to {path}; check it with `skinlesion info {path}`")


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: user errors become one sentence and exit code 2, never a traceback."""
    try:
        app(args=argv, standalone_mode=False)
    except SkinLesionError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:  # typer's own exits (--help)
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and anything unexpected
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if os.environ.get("SKINLESION_DEBUG"):
            raise
        typer.echo(
            f"error: unexpected {type(exc).__name__}: {exc} "
            "(rerun with SKINLESION_DEBUG=1 for the traceback and report it as a bug)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
