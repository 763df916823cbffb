"""``skinlesion info``, ``split``, ``audit``, ``download`` and ``prepare``: datasets, splits, leakage, caches."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import SkinLesionError
from .common import ON_CONFLICT_HELP, OnConflict, _say, _warn, on_conflict_of, write_csv


class SplitKind(str, Enum):
    lesion = "lesion"
    image = "image"
    official = "official"


class Source(str, Enum):
    ham10000 = "ham10000"
    dermamnist = "dermamnist"


def info(
    data: List[Path] = typer.Argument(
        ..., help="HAM10000 or ISIC folder, metadata CSV, DermaMNIST .npz or prepared cache; several folders: combined."
    ),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Drop metadata rows whose image is missing."),
    on_conflict: Optional[OnConflict] = typer.Option(None, "--on-conflict", help=ON_CONFLICT_HELP, show_default=False),
    quick: bool = typer.Option(False, "--quick", help="Do not decode every image to look for corrupt files."),
) -> None:
    """Describe a dataset (or several combined): images per class, lesions, metadata coverage, problems."""
    from ..card import is_model, model_info
    from ..data.describe import describe
    from ..data.ham10000 import check_images, load_dataset

    if len(data) == 1 and is_model(data[0]):  # a model: its networks, classes and training images' skin tone
        _say(model_info(data[0]))
        return
    conflict = on_conflict_of(data, on_conflict)
    ds = load_dataset(list(data), allow_missing=allow_missing, on_conflict=conflict)
    problems = [] if quick else check_images(ds)
    _say(describe(ds, problems))
    for w in ds.warnings:
        _warn(w)
    if problems:
        raise SkinLesionError(
            f"{len(problems)} image file(s) cannot be read (first: {problems[0]}); re-download them or remove their rows from the metadata."
        )


def split(
    data: List[Path] = typer.Argument(
        ..., help="HAM10000 or ISIC folder, metadata CSV or DermaMNIST .npz; several folders: one split of their combination."
    ),
    out: Path = typer.Option(Path("split.csv"), "--out", "-o", help="Where to write the manifest CSV."),
    kind: SplitKind = typer.Option(
        SplitKind.lesion, "--kind", help="lesion (default, leak-free), image (leaky reference), official (DermaMNIST)."
    ),
    train: float = typer.Option(0.70, help="Train fraction."),
    val: float = typer.Option(0.10, help="Validation fraction."),
    test: float = typer.Option(0.20, help="Test fraction."),
    seed: int = typer.Option(42, help="Random seed."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Drop metadata rows whose image is missing."),
    on_conflict: Optional[OnConflict] = typer.Option(None, "--on-conflict", help=ON_CONFLICT_HELP, show_default=False),
    dedup: bool = typer.Option(False, "--dedup", help="Keep near-duplicate images (perceptual hash) together, as one lesion."),
    max_distance: int = typer.Option(2, "--max-distance", help="With --dedup: pHash bits two near-duplicates may differ in."),
    force: bool = typer.Option(False, "--force", help="Replace an existing manifest at --out (runs may have been trained on it)."),
) -> None:
    """Write a split manifest (image_id,lesion_id,dx,split); lesion-grouped and stratified by default.

    An existing manifest at --out is kept unless --force (or the new one is identical)."""
    from ..data.ham10000 import load_dataset, read_metadata, with_official_split
    from ..data.split import make_split

    conflict = on_conflict_of(data, on_conflict)
    path = Path(data[0])
    groups, ds = None, None
    if len(data) == 1 and path.is_file() and path.suffix.lower() == ".csv":
        if dedup:
            raise SkinLesionError("--dedup compares the images; pass the dataset folder, not its metadata CSV.")
        from ..data.isic_layouts import read_table

        table = read_table(path)  # an ISIC CSV (2019 ground truth, 2020 table, isic-cli): its labels, no pixels
        if table is not None:
            for w in table.warnings:
                _warn(w)
        meta = table.meta if table is not None else with_official_split(read_metadata(path), path.parent)  # metadata only
    else:
        ds = load_dataset(list(data), allow_missing=allow_missing, on_conflict=conflict)
        for w in ds.warnings:
            _warn(w)
        meta = ds.meta
        if dedup:
            from ..data.audit import image_hashes, near_duplicate_groups, near_duplicate_pairs

            _check_distance(max_distance)
            pairs = near_duplicate_pairs(image_hashes(ds), max_distance)
            groups, regrouped = near_duplicate_groups(meta, pairs)
            merged = int(len(set(meta["lesion_id"])) - groups.nunique())
            _say(
                f"--dedup: {len(pairs)} near-duplicate pair(s) within {max_distance} bits; {regrouped} images regrouped "
                f"({merged} lesion id(s) merged into others) and kept in one split"
            )
    report = make_split(meta, kind=kind.value, fractions=(train, val, test), seed=seed, groups=groups)
    if ds is not None:  # as `train` will say: a class of the label set with no image in train
        from ..data.describe import empty_classes

        train_ids = set(report.manifest.loc[report.manifest["split"] == "train", "image_id"])
        for w in empty_classes(ds.meta.loc[ds.meta["image_id"].isin(train_ids), "label"], ds.label_set):
            _warn(w)
    if out.is_file() and not force:
        if out.read_text() == report.manifest.to_csv(index=False):
            _say(report.table())
            _say(f"\n{out} already holds this manifest ({len(report.manifest)} images, kind={report.kind}, seed={seed}); unchanged")
            return
        raise SkinLesionError(
            f"{out} already holds another split manifest, and runs may have been trained on it; "
            "pass --force to replace it, or choose another --out."
        )
    write_csv(report.manifest, out)
    _say(report.table())
    _say(f"\nwrote {out} ({len(report.manifest)} images, kind={report.kind}, seed={seed})")


def _check_distance(max_distance: int) -> None:
    if not 0 <= max_distance <= 16:
        raise SkinLesionError(
            f"--max-distance {max_distance} is out of range; use 0 to 16 bits of the 64-bit hash (2 finds re-encoded copies)."
        )


def audit(
    data: List[Path] = typer.Argument(
        ...,
        help="HAM10000 or ISIC folder or DermaMNIST .npz (images compared too), or a metadata CSV (lesions only); "
        "several folders: audited as their combination.",
    ),
    split: Optional[Path] = typer.Option(None, "--split", help="Split manifest to audit (default: the dataset's official split)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write every shared pair (lesion or near-duplicate) to this CSV."),
    max_distance: int = typer.Option(2, "--max-distance", help="pHash bits two near-duplicate images may differ in."),
    allow_missing: bool = typer.Option(False, "--allow-missing"),
    on_conflict: Optional[OnConflict] = typer.Option(None, "--on-conflict", help=ON_CONFLICT_HELP, show_default=False),
) -> None:
    """Audit a split for leakage: lesions shared between splits, near-duplicate images across them.

    Exits 1 when a test image has a sibling of its lesion, or a near-duplicate, in train.
    """
    from ..data.audit import audit as run_audit
    from ..data.audit import image_hashes
    from ..data.ham10000 import load_dataset, read_metadata, with_official_split
    from ..data.split import read_manifest

    _check_distance(max_distance)
    conflict = on_conflict_of(data, on_conflict)
    path = Path(data[0])
    where = " ".join(map(str, data))
    ds = None
    if len(data) == 1 and path.is_file() and path.suffix.lower() == ".csv":
        meta = with_official_split(read_metadata(path), path.parent)
    else:
        ds = load_dataset(list(data), allow_missing=allow_missing, on_conflict=conflict)
        meta = ds.meta
        for w in ds.warnings:
            _warn(w)
    if split is not None:
        manifest = read_manifest(split)
        unknown = set(manifest["image_id"]) - set(meta["image_id"])
        if unknown:
            raise SkinLesionError(
                f"{len(unknown)} image(s) of {split.name} are not in {where} (first: {sorted(unknown)[0]}); audit the split with its dataset."
            )
    elif "split" in meta.columns:
        manifest = meta[["image_id", "lesion_id", "dx", "split"]].copy()
    else:
        raise SkinLesionError(f"{where} has no official split; pass --split FILE (from `skinlesion split`).")
    hashes = None
    if ds is not None:
        pos = ds.meta.reset_index(drop=True).reset_index().set_index("image_id").loc[manifest["image_id"], "index"].to_numpy()
        hashes = image_hashes(ds, pos)
    report = run_audit(manifest, hashes, max_distance)
    _say(report.table())
    if out is not None:
        write_csv(report.pairs, out)
        _say(f"wrote {out} ({len(report.pairs)} pairs)")
    if report.leaks_into_test:
        _warn("test images have a sibling or a near-duplicate in train: test numbers on this split are optimistic.")
        raise typer.Exit(1)


def download(
    source: Source = typer.Argument(..., help="ham10000 (Kaggle, via kagglehub) or dermamnist (medmnist)."),
    to: Path = typer.Option(..., "--to", help="Folder to put the data in."),
) -> None:
    """Download HAM10000 or DermaMNIST (needs internet; offline it says how to get the data by hand)."""
    from ..data import download as dl

    path = dl.download_ham10000(to) if source is Source.ham10000 else dl.download_dermamnist(to)
    _say(f"downloaded {source.value} to {path}; check it with `skinlesion info {path}`")


def prepare(
    data: Path = typer.Argument(..., help="HAM10000 folder, metadata CSV or .npz."),
    out: str = typer.Option(
        ..., "--out", "-o", help="Cache folder to write (resumable); with --format litdata a folder or an s3:// / gs:// URL."
    ),
    size: int = typer.Option(256, "--size", help="Square side of the cached images."),
    format: str = typer.Option(
        "cache", "--format", help="cache (one memory-mapped array) or litdata (streaming chunks, litdata.optimize)."
    ),
    chunk_mb: float = typer.Option(64.0, "--chunk-mb", help="With --format litdata: the size of one chunk in MB."),
    force: bool = typer.Option(False, "--force", help="With --format litdata: replace the chunks already in --out."),
    allow_missing: bool = typer.Option(False, "--allow-missing"),
) -> None:
    """Decode and resize every image once: a memory-mapped cache, or litdata streaming chunks; train/evaluate accept either as DATA."""
    if format == "litdata":
        from ..data import load_dataset
        from ..data.shards import prepare_litdata

        ds = load_dataset(data, allow_missing=allow_missing)
        state = prepare_litdata(ds, out, size, source=data, chunk_mb=chunk_mb, force=force)
        _say(f"litdata chunks {out}: {state['n']} images at {size}x{size}; use it as DATA for split, train and evaluate")
        return
    if format != "cache":
        raise SkinLesionError(f"Unknown --format {format!r}; use cache or litdata.")
    from ..data.prepare import prepare as run

    state = run(data, Path(out), size, allow_missing=allow_missing)
    _say(
        f"cache {out}: {state['done']} images at {size}x{size}; use it as DATA for train and evaluate "
        f"(train on the raw folder with --source-size {size} to get the same pixels)"
    )
