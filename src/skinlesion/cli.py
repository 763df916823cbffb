"""The ``skinlesion`` command. Heavy libraries are imported inside each verb."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
import typer.exceptions

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


class SplitKind(str, Enum):
    lesion = "lesion"
    image = "image"
    official = "official"


class Source(str, Enum):
    ham10000 = "ham10000"
    dermamnist = "dermamnist"


@app.command()
def info(
    data: List[Path] = typer.Argument(
        ..., help="HAM10000 or ISIC folder, metadata CSV, DermaMNIST .npz or prepared cache; several folders: combined."
    ),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Drop metadata rows whose image is missing."),
    quick: bool = typer.Option(False, "--quick", help="Do not decode every image to look for corrupt files."),
) -> None:
    """Describe a dataset (or several combined): images per class, lesions, metadata coverage, problems."""
    from .data.describe import describe
    from .data.ham10000 import check_images, load_dataset

    ds = load_dataset(list(data), allow_missing=allow_missing)
    problems = [] if quick else check_images(ds)
    _say(describe(ds, problems))
    for w in ds.warnings:
        _warn(w)
    if problems:
        raise SkinLesionError(
            f"{len(problems)} image file(s) cannot be read (first: {problems[0]}); re-download them or remove their rows from the metadata."
        )


@app.command()
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
    dedup: bool = typer.Option(False, "--dedup", help="Keep near-duplicate images (perceptual hash) together, as one lesion."),
    max_distance: int = typer.Option(2, "--max-distance", help="With --dedup: pHash bits two near-duplicates may differ in."),
    force: bool = typer.Option(False, "--force", help="Replace an existing manifest at --out (runs may have been trained on it)."),
) -> None:
    """Write a split manifest (image_id,lesion_id,dx,split); lesion-grouped and stratified by default.

    An existing manifest at --out is kept unless --force (or the new one is identical)."""
    from .data.ham10000 import load_dataset, read_metadata, with_official_split
    from .data.split import make_split

    path = Path(data[0])
    groups = None
    if len(data) == 1 and path.is_file() and path.suffix.lower() == ".csv":
        if dedup:
            raise SkinLesionError("--dedup compares the images; pass the dataset folder, not its metadata CSV.")
        from .data.isic_layouts import read_table

        table = read_table(path)  # an ISIC CSV (2019 ground truth, 2020 table, isic-cli): its labels, no pixels
        if table is not None:
            for w in table.warnings:
                _warn(w)
        meta = table.meta if table is not None else with_official_split(read_metadata(path), path.parent)  # metadata only
    else:
        ds = load_dataset(list(data), allow_missing=allow_missing)
        for w in ds.warnings:
            _warn(w)
        meta = ds.meta
        if dedup:
            from .data.audit import image_hashes, near_duplicate_groups, near_duplicate_pairs

            _check_distance(max_distance)
            pairs = near_duplicate_pairs(image_hashes(ds), max_distance)
            groups, regrouped = near_duplicate_groups(meta, pairs)
            merged = int(len(set(meta["lesion_id"])) - groups.nunique())
            _say(
                f"--dedup: {len(pairs)} near-duplicate pair(s) within {max_distance} bits; {regrouped} images regrouped "
                f"({merged} lesion id(s) merged into others) and kept in one split"
            )
    report = make_split(meta, kind=kind.value, fractions=(train, val, test), seed=seed, groups=groups)
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


@app.command()
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
) -> None:
    """Audit a split for leakage: lesions shared between splits, near-duplicate images across them.

    Exits 1 when a test image has a sibling of its lesion, or a near-duplicate, in train.
    """
    from .data.audit import audit as run_audit
    from .data.audit import image_hashes
    from .data.ham10000 import load_dataset, read_metadata, with_official_split
    from .data.split import read_manifest

    _check_distance(max_distance)
    path = Path(data[0])
    where = " ".join(map(str, data))
    ds = None
    if len(data) == 1 and path.is_file() and path.suffix.lower() == ".csv":
        meta = with_official_split(read_metadata(path), path.parent)
    else:
        ds = load_dataset(list(data), allow_missing=allow_missing)
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


@app.command()
def download(
    source: Source = typer.Argument(..., help="ham10000 (Kaggle, via kagglehub) or dermamnist (medmnist)."),
    to: Path = typer.Option(..., "--to", help="Folder to put the data in."),
) -> None:
    """Download HAM10000 or DermaMNIST (needs internet; offline it says how to get the data by hand)."""
    from .data import download as dl

    path = dl.download_ham10000(to) if source is Source.ham10000 else dl.download_dermamnist(to)
    _say(f"downloaded {source.value} to {path}; check it with `skinlesion info {path}`")


def _augment_pairs(items: list[str]) -> dict:
    """``["contrast=0.6", ...]`` -> ``{"contrast": 0.6}``; the names and ranges are checked with the config."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:  # no "=" leaves value empty, which float() refuses too
            raise SkinLesionError(f"--augment {item!r} is not NAME=NUMBER; write e.g. --augment contrast=0.6.") from None
    return out


@app.command()
def train(
    data: Optional[List[Path]] = typer.Argument(
        None,
        help="Dataset (folder, CSV, .npz or prepared cache), or several folders combined (one label set, each image once); "
        "default: the --config run's.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoints, config, metrics)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A run's config.json: rerun it; flags given here override it."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split manifest from `skinlesion split` (not with --folds)."),
    folds: Optional[int] = typer.Option(
        None,
        "--folds",
        help="Train a cross-validated ensemble of this many members on lesion-grouped folds of all images (out-of-fold validation).",
    ),
    metadata: str = typer.Option(
        "auto", "--metadata", help="With --folds: use age, sex and body site: auto (only where it helps out of fold), yes or no."
    ),
    backbone: Optional[str] = typer.Option(None, help="Any timm model name [default: resnet50]."),
    pretrained: Optional[bool] = typer.Option(
        None,
        "--pretrained/--no-pretrained",
        help="Start from ImageNet weights (timm download, or offline packages for tf_efficientnet_lite0..2).",
    ),
    weights: Optional[Path] = typer.Option(None, "--weights", help="ImageNet/backbone weights as a .safetensors file."),
    input_size: Optional[int] = typer.Option(None, help="Network input size [default: backbone's, or 4x tiny images]."),
    source_size: Optional[int] = typer.Option(
        None, help="Resize every image to this square size first [default: tiny images' or a cache's own size]; matches `prepare --size`."
    ),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs [default: 30]."),
    batch_size: Optional[int] = typer.Option(None, help="[default: 64]"),
    lr: Optional[float] = typer.Option(None, help="Peak AdamW learning rate [default: 1e-3]."),
    weight_decay: Optional[float] = typer.Option(None, help="[default: 0.05]"),
    balance: Optional[str] = typer.Option(
        None, help="Class imbalance: sqrt (inverse-sqrt-frequency loss weights, default), weights, sampler, none."
    ),
    label_smoothing: Optional[float] = typer.Option(None, help="[default: 0.05]"),
    patience: Optional[int] = typer.Option(None, help="Early stopping patience in epochs, on val balanced accuracy [default: 8]."),
    seed: Optional[int] = typer.Option(None, help="[default: 42]"),
    num_workers: Optional[int] = typer.Option(None, help="DataLoader workers [default: sized to the machine]."),
    accelerator: Optional[str] = typer.Option(None, help="auto (default), cpu or gpu."),
    devices: Optional[str] = typer.Option(None, help="Devices per node, e.g. 2 (DDP) [default: auto]."),
    num_nodes: Optional[int] = typer.Option(None, help="Nodes for multi-node DDP [default: 1]."),
    strategy: Optional[str] = typer.Option(None, help="Lightning strategy, e.g. ddp [default: auto]."),
    precision: Optional[str] = typer.Option(None, help="[default: bf16-mixed on GPU, 32-true on CPU]"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last finished epoch."),
    force: bool = typer.Option(
        False,
        "--force",
        help="With --resume: train a run that has no checkpoint to continue from again, from epoch 0 (its models are replaced).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    record_shards: bool = typer.Option(
        False, "--record-shards", help="Write the image positions each rank trains on in epoch 0 (checks DDP sharding)."
    ),
    augment: Optional[list[str]] = typer.Option(
        None,
        "--augment",
        help="Training augmentation strength NAME=VALUE, repeatable: brightness, contrast (0-0.9), jitter (0-0.5), "
        "vignette (0-1) [default: 0.4, 0.4, 0.1, 0.25].",
    ),
    loss: Optional[str] = typer.Option(
        None,
        "--loss",
        help="cross-entropy (default; class weights from --balance), logit-adjusted (Menon et al. 2021) or balanced-softmax "
        "(Ren et al. 2020; the logit adjustment with tau 1); both with --balance none.",
    ),
    loss_tau: Optional[float] = typer.Option(None, "--loss-tau", help="The logit adjustment of --loss logit-adjusted [default: 1]."),
    drw_epochs: Optional[int] = typer.Option(
        None,
        "--drw-epochs",
        help="Deferred re-weighting (Cao et al. 2019): class-balanced loss weights for the last N epochs, the plain loss before "
        "(with --balance none) [default: 0, off].",
    ),
    mixup: Optional[float] = typer.Option(None, "--mixup", help="Mixup alpha (timm's Mixup, e.g. 0.2) [default: 0, off]."),
    cutmix: Optional[float] = typer.Option(None, "--cutmix", help="CutMix alpha (e.g. 1.0) [default: 0, off]."),
    mix_prob: Optional[float] = typer.Option(None, "--mix-prob", help="Share of batches mixed by --mixup/--cutmix [default: 1]."),
    logger: Optional[str] = typer.Option(
        None,
        "--logger",
        help="Experiment tracking: tensorboard (into OUT/tensorboard), csv (OUT/logs), mlflow (--tracking-uri), none, or auto "
        "[default: tensorboard where installed, else csv].",
    ),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="With --logger mlflow: the tracking URI [default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db]."
    ),
    decision_rule: Optional[str] = typer.Option(
        None,
        "--decision-rule",
        help="The rule the model names its top class by: most-probable (accuracy, default) or balanced (balanced accuracy); "
        "both are fitted and stored, predict --rule switches.",
    ),
    augment_on: Optional[str] = typer.Option(
        None,
        "--augment-on",
        help="Where the training augmentation runs: device (whole batches on the GPU, or the CPU), workers (image by image "
        "on DataLoader workers) or auto [default: device when the images have one size: a cache, .npz or --source-size].",
    ),
) -> None:
    """Train a model on a split, or a cross-validated ensemble with --folds; writes models, config, manifest and metrics into --out.

    Defaults live in one place, skinlesion.recipe.TrainConfig; --config reruns a run from its resolved config.json.
    """
    from .recipe import check_config, config_from  # no torch yet: a bad option is refused at once

    if metadata not in ("auto", "yes", "no"):
        raise SkinLesionError(f"Unknown --metadata {metadata!r}; use auto, yes or no.")
    given = {
        k: v
        for k, v in dict(
            data=(str(data[0]) if len(data) == 1 else [str(d) for d in data]) if data else None,
            split=str(split) if split else None,
            backbone=backbone,
            pretrained=pretrained,
            weights=str(weights) if weights else None,
            input_size=input_size,
            source_size=source_size,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            balance=balance,
            label_smoothing=label_smoothing,
            patience=patience,
            seed=seed,
            num_workers=num_workers,
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            precision=precision,
            decision_rule=decision_rule,
            loss=loss,
            loss_tau=loss_tau,
            drw_epochs=drw_epochs,
            mixup=mixup,
            cutmix=cutmix,
            mix_prob=mix_prob,
            logger=logger,
            tracking_uri=tracking_uri,
            augment_on=augment_on,
        ).items()
        if v is not None
    }
    if augment:
        given["augment"] = _augment_pairs(augment)
    if resume:
        config = _resume_config(out, config, given)
        if _resume_is_done(out, force):
            return
    elif force:
        raise SkinLesionError("--force goes with --resume (to train a run without a checkpoint again); a new run needs no --force.")
    cfg = config_from(config, out=str(out), progress=progress, extra={"record_shards": record_shards}, **given)
    if not cfg.data:
        raise SkinLesionError("Pass the dataset (DATA), or --config RUN/config.json of an earlier run.")
    if folds is None and not cfg.split and not resume:
        raise SkinLesionError("Pass --split FILE (from `skinlesion split`), or --folds K for a cross-validated ensemble.")
    if folds is not None and split is not None:
        raise SkinLesionError("--folds makes its own lesion-grouped folds of all images; leave out --split.")
    check_config(cfg)
    if folds is not None:
        from .cv import train_cv

        path = train_cv(cfg, folds, metadata=metadata)
        _say(f"ensemble written to {path} (out-of-fold report: {out / 'oof_report' / 'report.md'})")
        return
    from .train import train as run

    run(cfg, resume=resume)
    _say(f"run written to {out}")


def _resume_is_done(out: Path, force: bool) -> bool:
    """Before a resume: True (said) when the run in ``out`` is already complete; refuse one whose finished epochs
    cannot be continued (no checkpoints/last.ckpt) unless ``force``: training it from epoch 0 would replace its models."""
    import csv

    finished = (out / "val_metrics.json").is_file()  # finish_run writes it last: the run trained and was fitted
    try:
        with (out / "metrics.csv").open(newline="") as f:
            epochs = sum(1 for _ in csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        epochs = 0
    has_ckpt = (out / "checkpoints" / "last.ckpt").is_file()
    if finished and has_ckpt:
        _say(f"the run in {out} is already complete ({epochs} epoch(s) in metrics.csv, its models written); nothing to resume")
        return True
    # a run that stopped before its first checkpoint was written (a full disk) keeps checkpoints/ and resumes from
    # epoch 0 as before; refused are a finished run, and finished epochs whose checkpoints/ folder is gone
    gone = epochs and not (out / "checkpoints").is_dir()
    if not has_ckpt and (finished or gone) and not force:
        what = "is already complete" if finished else f"has {epochs} finished epoch(s) in metrics.csv"
        raise SkinLesionError(
            f"The run in {out} {what} but no checkpoints/last.ckpt to continue from; resuming would train it again from "
            "epoch 0 and replace its models: keep them (they are the result), or pass --force to retrain it."
        )
    return False


def _resume_config(out: Path, config: Optional[Path], given: dict) -> Path:
    """The run's own config.json; an option given with --resume must agree with it, never be silently replaced."""
    saved_path = out / "config.json"
    if not saved_path.is_file():
        raise SkinLesionError(f"Nothing to resume in {out}: it has no config.json from an earlier run; check --out.")
    if config is not None and Path(config).resolve() != saved_path.resolve():
        raise SkinLesionError(f"--resume continues the run in {out} with its own config.json; leave out --config.")
    from .recipe import read_config

    saved = read_config(saved_path)
    for key, value in given.items():
        if key in ("num_workers", "logger", "tracking_uri"):  # how this machine runs or watches it, not what the run is
            continue
        was = saved.get(key)
        if key in ("data", "split", "weights") and was is not None:
            same = [str(Path(v).resolve()) for v in ([value] if isinstance(value, str) else value)] == [
                str(Path(v).resolve()) for v in ([was] if isinstance(was, str) else was)
            ]
        else:
            same = value == was
        if not same:
            flag = "DATA" if key == "data" else "--" + key.replace("_", "-")
            raise SkinLesionError(
                f"--resume continues the run in {out} as it was configured ({flag} {was}); "
                f"leave out {flag}, or start a new run in another --out."
            )
    return saved_path


@app.command()
def evaluate(
    model: str = typer.Option("default", "--model", "-m", help="Run directory, model .safetensors file, or 'default'."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset to evaluate on."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json, plots and report.md."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split manifest; with --subset picks the images."),
    subset: Optional[str] = typer.Option(
        None, "--subset", help="train, val or test (default test with --split; with no --split, the dataset's official split)."
    ),
    ids: Optional[Path] = typer.Option(None, "--ids", help="CSV of image_ids to restrict to."),
    tta: Optional[bool] = typer.Option(
        None, "--tta/--no-tta", help="Average the 8 flips/rotations (default: the model's own setting, chosen on val)."
    ),
    allow_missing: bool = typer.Option(False, "--allow-missing"),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="ISIC 2018 ground-truth CSV (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC): evaluate its images with its labels."
    ),
    rule: Optional[str] = typer.Option(
        None, "--rule", help="Decision rule naming each image's class: most-probable or balanced (default: the model's own)."
    ),
    mapping: Optional[Path] = typer.Option(
        None,
        "--map",
        help="External validation: CSV from,to mapping the data's classes onto the model's (e.g. ak,akiec); "
        "shared codes map to themselves, ISIC 2019's ak and scc to HAM10000's akiec, an empty to leaves a class out.",
    ),
) -> None:
    """Evaluate a model: metrics.json, confusion matrix, ROC, reliability diagram and report.md."""
    from .evaluate import evaluate_model

    with _progress("evaluating") as progress:
        m = evaluate_model(
            model,
            data,
            out,
            split=split,
            subset=subset,
            ids=ids,
            tta=tta,
            allow_missing=allow_missing,
            truth=labels,
            progress=progress,
            rule=rule,
            mapping=mapping,
        )
    for w in m["warnings"]:
        _warn(w)
    _say(
        f"images {m['n_images']} (decision rule {m['decision_rule']}): accuracy {m['accuracy']:.4f}, "
        f"balanced accuracy {m['balanced_accuracy']:.4f}, "
        f"macro AUC {m['auc_macro']:.4f}, malignant AUC {m['malignant_auc']:.4f}, "
        f"ECE {m['ece_uncalibrated']:.4f} -> {m['ece']:.4f} (T={m['temperature']:.3f})"
    )
    _say(f"report: {out / 'report.md'}")


def write_csv(table, out: Path) -> None:
    """Write a table atomically: a temporary file in the same folder, renamed; nothing left on failure."""
    from .errors import atomic_write

    if out.is_dir():
        raise SkinLesionError(f"--out {out} is a folder; pass a file name such as {out / 'predictions.csv'}.")
    atomic_write(out, lambda t: table.to_csv(t, index=False))


def read_meta_csv(path: Path) -> dict:
    """image id -> {age, sex, localization} from a CSV with an image (or image_id) column."""
    if not path.is_file():
        raise SkinLesionError(f"The patient data file {path} does not exist; pass a CSV with columns image,age,sex,localization.")
    from .data.csvfile import read_csv

    table = read_csv(path, "a patient data CSV with columns image,age,sex,localization", dtype=str)
    key = next((c for c in ("image", "image_id") if c in table.columns), None)
    if key is None:
        raise SkinLesionError(f"The patient data file {path.name} needs an image or image_id column (and any of age, sex, localization).")
    from .posthoc import META_FIELDS, encode_metadata

    for i, row in table.iterrows():
        try:
            encode_metadata([row.to_dict()])
        except ValueError as exc:
            raise SkinLesionError(f"{path.name}, row {i + 2}: {exc}; leave a field empty when it is unknown.") from None
    return {Path(str(r[key])).stem: {f: r.get(f) for f in META_FIELDS if f in table.columns} for _, r in table.iterrows()}


@app.command()
def predict(
    model: str = typer.Argument(
        ..., help="Run directory, model file (.safetensors or .onnx), 'default', or hf://OWNER/NAME (a Hugging Face Hub model)."
    ),
    images: Optional[List[str]] = typer.Argument(None, help="Image files, folders or globs."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the rows to this CSV."),
    meta: Optional[Path] = typer.Option(
        None, "--meta", help="CSV of patient data: image (or image_id), age, sex, localization; any may be empty."
    ),
    fmt: str = typer.Option(
        "skinlesion",
        "--format",
        help="skinlesion (every field), isic2018 (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC; a HAM10000 model) or "
        "isic2019 (image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK; an isic2019 model).",
    ),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Average the 8 flips/rotations (default: the model's own setting)."),
    backend: str = typer.Option("auto", help="auto (ONNX Runtime when a current export of the model exists), torch or onnx."),
    rule: Optional[str] = typer.Option(
        None, "--rule", help="Decision rule naming the top class: most-probable or balanced (default: the model's own, in its card)."
    ),
    server: Optional[str] = typer.Option(
        None, "--server", help="URL of a running `skinlesion serve`: it analyses the files (give only FILES, no MODEL)."
    ),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="With --server: a file holding the service's API key."),
) -> None:
    """Predict images: one row each (top class, probabilities, prediction set, tier, refer, warnings, errors).

    Exits 1 when no file could be analysed (and, with --format isic2018, when any could not).
    """
    import pandas as pd

    from .predict import Predictor, expand_inputs, predict_files, row_columns

    if fmt not in ("skinlesion", "isic2018", "isic2019"):
        raise SkinLesionError(f"Unknown --format {fmt!r}; use skinlesion, isic2018 or isic2019.")
    if server:  # the service's model answers: every argument is a file (MODEL is not given)
        _check_remote(model, tta, backend)
        images = [model, *(images or [])]
    elif api_key_file:
        raise SkinLesionError("--api-key-file goes with --server URL; a local run needs no key.")
    paths = expand_inputs(images or [])
    if not paths:
        raise SkinLesionError("No files to predict; pass image files, folders or globs.")
    meta_rows = read_meta_csv(meta) if meta else None
    if server:
        from .serve.client import predict_remote

        with _progress("predicting") as progress:
            rows, codes = predict_remote(
                server,
                paths,
                key_file=api_key_file,
                meta=meta_rows,
                progress=lambda n: progress(n, len(paths)),
                warn=_warn,
                rule=rule,
            )
    else:
        predictor = Predictor(model, backend=backend, tta=tta, rule=rule)
        if fmt != "skinlesion":
            from .isic import check_format

            check_format(fmt, predictor.labels)  # before any image is analysed
        if meta_rows is not None and not predictor.uses_metadata:
            _warn("this model does not use patient data; --meta is ignored.")
        with _progress("predicting") as progress:
            rows = predict_files(predictor, paths, meta=meta_rows, progress=lambda n: progress(n, len(paths)))
        codes = predictor.labels.codes
    table = pd.DataFrame(rows).reindex(columns=row_columns(codes))
    failed = table["error"].fillna("").astype(bool)
    if fmt != "skinlesion":
        from .classes import label_set
        from .isic import submission

        good = table[~failed]
        sub = submission(good["image"], good[list(codes)].to_numpy(float), fmt, label_set(tuple(codes)))
        if out:
            write_csv(sub, out)
    elif out:
        write_csv(table, out)
    shown = table[["image", "top_class", "probability", "tier", "prediction_set", "warnings", "error"]].copy()
    from .verdict import tier_shown

    shown["tier"] = [tier_shown(r) for r in table[["tier", "verdict"]].to_dict("records")]  # "not analysed": out of distribution
    shown["image"] = [Path(str(n)).name for n in shown["image"]]
    with pd.option_context("display.max_columns", None, "display.width", 220, "display.max_colwidth", 70):
        _say(shown.astype(object).fillna("").to_string(index=False))
    if out:
        _say(f"wrote {out}")
    if failed.all():
        _warn(f"none of the {len(table)} file(s) could be analysed; see the error column.")
        raise typer.Exit(1)
    if failed.any():
        _warn(f"{int(failed.sum())} of {len(table)} file(s) could not be read; see the error column.")
        if fmt != "skinlesion":
            _warn("the ISIC file holds only the images that could be analysed; the scorer needs every test image.")
            raise typer.Exit(1)


def _check_remote(model: str, tta, backend: str) -> None:
    """With --server no local model runs: options that would choose one are refused, never ignored (--rule travels)."""
    if tta is not None or backend != "auto":
        raise SkinLesionError(
            "--tta and --backend choose how a local model runs; leave them out with --server "
            "(the service's model answers, with its own settings; --rule is sent to it)."
        )
    if model == "default" and not Path(model).exists():
        raise SkinLesionError("With --server the service's model answers; give only the files (leave out MODEL).")


@app.command()
def export(
    model: str = typer.Argument(..., help="Run directory, model .safetensors file, or 'default'."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="The .onnx file to write (default: beside the model; for a read-only 'default', the user cache)."
    ),
    check: List[Path] = typer.Option([], "--check", help="Extra real images for the parity check."),
    fmt: str = typer.Option(
        "onnx", "--format", help="onnx, or hub: a Hugging Face Hub folder (config.json, model.safetensors, README.md) for --out."
    ),
) -> None:
    """Export to ONNX (refused when its probabilities differ from PyTorch by more than 1e-4), or as a Hub folder."""
    if fmt == "hub":
        from .hub_export import export_hub

        if out is None:
            raise SkinLesionError("--format hub writes a folder; pass it with --out DIR.")
        _say(f"wrote {export_hub(model, out)}: upload it with huggingface_hub.upload_folder, load it with --model DIR or hf://OWNER/NAME")
        return
    if fmt != "onnx":
        raise SkinLesionError(f"Unknown export format {fmt!r}; use onnx or hub.")
    from .export import export_onnx

    r = export_onnx(model, out, check_images=check)
    _say(f"wrote {r['path']}: parity on {r['n_checked']} inputs, max probability difference {r['max_probability_difference']:.2e}")


@app.command()
def card(
    model: str = typer.Argument("default", help="Run directory, model .safetensors file, or 'default'."),
    out: Path = typer.Option(Path("MODEL_CARD.md"), "--out", "-o", help="Markdown file to write."),
) -> None:
    """Write the model card, generated from the model bundle (numbers recomputed from its stored OOF predictions)."""
    from .card import write_card

    _say(f"wrote {write_card(model, out)}")


@app.command(name="app")
def app_cmd(
    model: str = typer.Option("default", "--model", "-m", help="Model to serve."),
    port: Optional[int] = typer.Option(
        None,
        "--port",
        help="Port to listen on [default: STREAMLIT_SERVER_PORT, else server.port of Streamlit's config.toml, else 8501].",
    ),
    address: str = typer.Option("localhost", "--address", help="Address to bind (0.0.0.0 to serve others)."),
    sample: Optional[Path] = typer.Option(
        None,
        "--sample",
        help="A real dermoscopic image the page offers as 'Try a sample' [default: the bundled HAM10000 melanoma]; "
        "a JSON beside it (as skinlesion/samples/ISIC_0024310.json) gives its ground truth and credit.",
    ),
    sample_credit: Optional[str] = typer.Option(
        None,
        "--sample-credit",
        help="Attribution shown under the sample [default: the credit in the JSON beside it].",
    ),
) -> None:
    """Start the Streamlit web app (exporting the model to ONNX Runtime first, once, when it can)."""
    from importlib import resources

    if sample is not None:
        from .intake import open_image

        sample = sample.expanduser().resolve()
        open_image(sample)  # a sample that is not a readable image is refused here, in one sentence

    from .bundle import onnx_for, resolve_model_path

    resolve_model_path(model)  # a wrong --model fails here, in one sentence
    port = _app_port(port)
    _port_free(address, port)
    if onnx_for(model) is None:  # ONNX Runtime serves faster and lighter: export once, before the server starts
        try:
            from .export import export_onnx

            r = export_onnx(model)
            _say(f"exported the model to {r['path']}; the app uses ONNX Runtime")
        except (SkinLesionError, OSError) as exc:
            _warn(f"serving with PyTorch: could not export to ONNX ({exc})")
    script = str(resources.files("skinlesion") / "app.py")
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        script,
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.showErrorDetails",
        "none",  # never a traceback in the page (details go to the server's console)
        "--client.toolbarMode",
        "minimal",  # no Deploy button
        "--server.maxUploadSize",
        "40",  # MiB, as skinlesion.intake.MAX_FILE_BYTES
        "--",
        "--model",
        model,
        *(["--sample", str(sample)] if sample is not None else []),
        *(["--sample-credit", sample_credit] if sample_credit else []),
    ]
    _say(f"skinlesion app on http://{address}:{port}")
    raise typer.Exit(_serve(cmd))


def _app_port(port: Optional[int]) -> int:
    """The app's port: --port, else Streamlit's own settings (STREAMLIT_SERVER_PORT, then server.port of
    ~/.streamlit/config.toml or ./.streamlit/config.toml), else 8501."""
    if port is not None:
        where = "--port"
    elif os.environ.get("STREAMLIT_SERVER_PORT", "").strip():
        where, port = "STREAMLIT_SERVER_PORT", os.environ["STREAMLIT_SERVER_PORT"].strip()
    else:
        from streamlit import config

        try:
            config.get_config_options(force_reparse=True)
        except Exception as exc:  # a config.toml Streamlit cannot parse
            raise SkinLesionError(f"Streamlit's config.toml cannot be read ({exc}); fix it, or pass --port.") from None
        where, port = f"server.port in {config.get_where_defined('server.port')}", config.get_option("server.port")
    try:
        port = int(port)
    except (TypeError, ValueError):
        port = -1
    if not 1 <= port <= 65535:
        if where == "--port":
            raise SkinLesionError(f"--port {port} is out of range; pass a port number from 1 to 65535.")
        raise SkinLesionError(f"The app's port from {where} is out of range (not a port number from 1 to 65535); fix it, or pass --port.")
    return port


def _port_free(address: str, port: int) -> None:
    """Refuse a port another server holds, before Streamlit starts (it would exit 0 with a log line)."""
    import socket

    if not 1 <= port <= 65535:
        raise SkinLesionError(f"--port {port} is out of range; use 1 to 65535 (8501 is Streamlit's usual one).")
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise SkinLesionError(f"--address {address!r} is not an address of this machine; use localhost or 0.0.0.0.") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(sockaddr)
        except OSError as exc:
            raise SkinLesionError(
                f"Port {port} on {address} is in use ({exc.strerror}); stop what holds it or choose another --port."
            ) from None


def _serve(cmd: list[str]) -> int:
    """Run the Streamlit server as a child; Ctrl-C or SIGTERM to us stops it too (never an orphan)."""
    import signal
    import subprocess

    class Stop(Exception):
        pass

    def on_term(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    server = subprocess.Popen(cmd)
    try:
        return server.wait()
    except (KeyboardInterrupt, Stop) as exc:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        return 130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def serve(
    model: str = typer.Option("default", "--model", "-m", help="Model to serve: run directory, model file, or 'default'."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --api-keys."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", help="Worker processes, each loading the model once (about one per core)."),
    api_keys: Optional[Path] = typer.Option(
        None, "--api-keys", envvar="SKINLESION_API_KEYS", help="File of API key hashes: callers must send `Authorization: Bearer KEY`."
    ),
    new_key: bool = typer.Option(False, "--new-key", help="Print a new API key, append its hash to --api-keys, and exit."),
    rate: Optional[str] = typer.Option(None, "--rate", help="Requests per key, e.g. 60/min (429 with Retry-After beyond it)."),
    cors: List[str] = typer.Option([], "--cors", help="An origin whose web pages may call the service (repeatable); none by default."),
    max_mb: float = typer.Option(20.0, "--max-mb", help="Largest request body, MiB (413 beyond it, before it is read whole)."),
    max_images: int = typer.Option(32, "--max-images", help="Most images per request (422 beyond it)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds a request may take (503 and abandoned beyond it)."),
    grace: float = typer.Option(30.0, "--grace", help="Seconds in-flight requests get to finish after SIGTERM."),
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", help="Analyses at once per worker [default: its share of the cores, one thread each]."
    ),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests admitted to wait per worker beyond --concurrency (503 beyond)."),
    max_connections: int = typer.Option(
        1000, "--max-connections", help="Open connections per worker (the oldest idle one is closed at the cap; 503 if none is idle)."
    ),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection has to send its request headers."),
    keep_alive: float = typer.Option(5.0, "--keep-alive", help="Seconds an idle connection stays open between requests."),
    max_megapixels: float = typer.Option(
        64.0, "--max-megapixels", help="Decoded megapixels one analysis holds at once (images are decoded one at a time)."
    ),
    formats: str = typer.Option("JPEG,PNG", "--formats", help="Image formats accepted, by their first bytes (also GIF, TIFF, BMP, WEBP)."),
    heatmaps: bool = typer.Option(True, "--heatmaps/--no-heatmaps", help="Allow ?heatmap= (its PyTorch weights load at start)."),
    metrics: str = typer.Option(
        "auto", "--metrics", help="/metrics: open, key (an API key needed) or off [default: open on loopback, key otherwise]."
    ),
    study_db: Optional[str] = typer.Option(None, "--study-db", help="Also serve the reader studies in this database (skinlesion study)."),
) -> None:
    """Serve the REST API (FastAPI on uvicorn): /v1/analyse, /v1/model, /v1/health, /v1/ready, /metrics, /docs."""
    from .serve.settings import Settings

    if new_key:
        from .serve.keys import new_key as make_key

        if api_keys is None:
            raise SkinLesionError("--new-key appends to a key file: pass --api-keys FILE (or set SKINLESION_API_KEYS).")
        key = make_key(api_keys)
        typer.echo(key)
        _warn(f"its hash was added to {api_keys}; the key is shown only this once, so store it now.")
        return
    settings = Settings(
        model=model,
        host=host,
        port=port,
        workers=workers,
        api_keys=str(api_keys) if api_keys else None,
        rate=rate,
        cors=list(cors),
        max_mb=max_mb,
        max_images=max_images,
        timeout=timeout,
        grace=grace,
        concurrency=concurrency,
        max_queue=max_queue,
        max_connections=max_connections,
        header_timeout=header_timeout,
        keep_alive=keep_alive,
        max_megapixels=max_megapixels,
        formats=formats.split(","),
        heatmaps=heatmaps,
        metrics=metrics,
        study_db=study_db,
    ).check()
    from .bundle import load_config, onnx_for, resolve_model_path

    load_config(resolve_model_path(model), check_backbones=False)  # a wrong --model fails here, in one sentence
    if onnx_for(model) is None:  # ONNX Runtime serves faster and lighter: export once, before the workers start
        try:
            from .export import export_onnx

            _say(f"exported the model to {export_onnx(model)['path']}; the service uses ONNX Runtime")
        except (SkinLesionError, OSError) as exc:
            _warn(f"serving with PyTorch: could not export to ONNX ({exc})")
    from .serve.runner import run

    scheme = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    _say(f"skinlesion serve on {scheme} ({workers} worker(s); API documentation at {scheme}/docs)")
    raise typer.Exit(run(settings))


@app.command()
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
        from .data import load_dataset
        from .data.shards import prepare_litdata

        ds = load_dataset(data, allow_missing=allow_missing)
        state = prepare_litdata(ds, out, size, source=data, chunk_mb=chunk_mb, force=force)
        _say(f"litdata chunks {out}: {state['n']} images at {size}x{size}; use it as DATA for split, train and evaluate")
        return
    if format != "cache":
        raise SkinLesionError(f"Unknown --format {format!r}; use cache or litdata.")
    from .data.prepare import prepare as run

    state = run(data, Path(out), size, allow_missing=allow_missing)
    _say(
        f"cache {out}: {state['done']} images at {size}x{size}; use it as DATA for train and evaluate "
        f"(train on the raw folder with --source-size {size} to get the same pixels)"
    )


app.add_typer(__import__("skinlesion.study.cli", fromlist=["app"]).app, name="study")  # skinlesion study create/invite/report


def _click_exceptions():
    """(ClickException, Abort) classes of click and of the click that typer may vendor (typer._click, typer >= 0.28)."""
    import click

    usage, abort = [click.exceptions.ClickException], [click.exceptions.Abort]
    try:
        from typer._click import exceptions as vendored

        usage.append(vendored.ClickException)
    except ImportError:
        pass
    abort += [c for c in (getattr(typer, "Abort", None), getattr(typer.exceptions, "Abort", None)) if isinstance(c, type)]
    return tuple(usage), tuple(abort)


def _say_interrupted() -> None:
    """Ctrl-C: "interrupted", and how to continue when the run said so (typer and click drop the exception itself)."""
    from .errors import Interrupted

    typer.echo(f"interrupted; {Interrupted.last}" if Interrupted.last else "interrupted", err=True)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: user errors become one sentence and exit code 2, never a traceback."""
    from .runtime import passive_waits

    passive_waits()  # before any verb imports torch: its thread pool sleeps instead of spinning on shared cores
    usage, abort = _click_exceptions()
    try:
        rc = app(args=argv, standalone_mode=False)  # a verb's typer.Exit(n) comes back as n here
        if rc == 130:  # typer turns Ctrl-C into Exit(130), silently
            _say_interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except SkinLesionError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, *abort):
        _say_interrupted()
        sys.exit(130)
    except typer.Exit as exc:  # typer's own exits (--help, a verb's exit code; typer turns Ctrl-C into Exit(130))
        if exc.exit_code == 130:
            _say_interrupted()
        sys.exit(exc.exit_code)
    except usage as exc:  # usage errors: unknown verb or option, bad choice or number
        exc.show()
        sys.exit(2 if getattr(exc, "exit_code", 2) not in (0, 1) else exc.exit_code)
    except Exception as exc:
        if os.environ.get("SKINLESION_DEBUG"):
            raise
        typer.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (rerun with SKINLESION_DEBUG=1 for the traceback and report it as a bug)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
