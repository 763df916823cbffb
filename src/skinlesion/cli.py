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


@app.command()
def train(
    data: Path = typer.Argument(..., help="Dataset (folder, CSV, .npz or prepared cache)."),
    split: Path = typer.Option(..., "--split", help="Split manifest from `skinlesion split`."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoints, config, metrics)."),
    backbone: str = typer.Option("resnet50", help="Any timm model name."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start from ImageNet weights (timm download, or offline packages for tf_efficientnet_lite0..2)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="ImageNet/backbone weights as a .safetensors file."),
    input_size: Optional[int] = typer.Option(None, help="Network input size (default: backbone's, or 4x tiny images)."),
    source_size: Optional[int] = typer.Option(None, help="Resize every image to this square size first (default: tiny images' or a cache's own size); matches `prepare --size`."),
    epochs: int = typer.Option(30),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-3),
    weight_decay: float = typer.Option(0.05),
    balance: str = typer.Option("sqrt", help="Class imbalance: sqrt (inverse-sqrt-frequency loss weights), weights (inverse frequency), sampler (balanced sampling), none."),
    label_smoothing: float = typer.Option(0.05),
    patience: int = typer.Option(8, help="Early stopping patience in epochs (val balanced accuracy)."),
    seed: int = typer.Option(42),
    num_workers: Optional[int] = typer.Option(None, help="DataLoader workers (default: sized to the machine)."),
    accelerator: str = typer.Option("auto", help="auto, cpu or gpu."),
    devices: str = typer.Option("auto", help="Devices per node, e.g. 2 (DDP)."),
    num_nodes: int = typer.Option(1, help="Nodes for multi-node DDP."),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp."),
    precision: Optional[str] = typer.Option(None, help="Default bf16-mixed on GPU, 32-true on CPU."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last finished epoch."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    record_shards: bool = typer.Option(False, "--record-shards", help="Write the image positions each rank trains on in epoch 0 (checks DDP sharding)."),
) -> None:
    """Train a model on a split; writes best/last models, config, manifest and metrics into --out."""
    from .train import TrainConfig
    from .train import train as run

    cfg = TrainConfig(data=str(data), split=str(split), out=str(out), backbone=backbone, pretrained=pretrained,
                      weights=str(weights) if weights else None, input_size=input_size, source_size=source_size, epochs=epochs,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, balance=balance,
                      label_smoothing=label_smoothing, patience=patience, seed=seed, num_workers=num_workers,
                      accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                      precision=precision, progress=progress, extra={"record_shards": record_shards})
    run(cfg, resume=resume)
    _say(f"run written to {out}")


@app.command()
def evaluate(
    model: str = typer.Option("default", "--model", "-m", help="Run directory, model .safetensors file, or 'default'."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset to evaluate on."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json, plots and report.md."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split manifest; with --subset picks the images."),
    subset: Optional[str] = typer.Option(None, "--subset", help="train, val or test (default test with --split; with no --split, the dataset's official split)."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="CSV of image_ids to restrict to."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Average the 8 flips/rotations (default: the model's own setting, chosen on val)."),
    allow_missing: bool = typer.Option(False, "--allow-missing"),
) -> None:
    """Evaluate a model: metrics.json, confusion matrix, ROC, reliability diagram and report.md."""
    from .evaluate import evaluate_model

    m = evaluate_model(model, data, out, split=split, subset=subset, ids=ids, tta=tta, allow_missing=allow_missing)
    _say(f"images {m['n_images']}: accuracy {m['accuracy']:.4f}, balanced accuracy {m['balanced_accuracy']:.4f}, "
         f"macro AUC {m['auc_macro']:.4f}, malignant AUC {m['malignant_auc']:.4f}, "
         f"ECE {m['ece_uncalibrated']:.4f} -> {m['ece']:.4f} (T={m['temperature']:.3f})")
    _say(f"report: {out / 'report.md'}")


@app.command()
def predict(
    model: str = typer.Argument(..., help="Run directory, model file (.safetensors or .onnx), or 'default'."),
    images: List[str] = typer.Argument(..., help="Image files, folders or globs."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the rows to this CSV."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Average the 8 flips/rotations (default: the model's own setting, chosen on val)."),
    backend: str = typer.Option("auto", help="auto (ONNX Runtime when an exported .onnx lies beside), torch or onnx."),
) -> None:
    """Predict images: one row each (top class, probabilities, malignant probability, warnings, errors)."""
    import pandas as pd

    from .classes import CODES
    from .predict import Predictor, expand_inputs, predict_files

    paths = expand_inputs(images)
    if not paths:
        raise SkinLesionError("No files to predict; pass image files, folders or globs.")
    rows = predict_files(Predictor(model, backend=backend, tta=tta), paths)
    cols = ["image", "top_class", "probability", "malignant_probability", *CODES, "ood_score", "warnings", "error"]
    table = pd.DataFrame(rows).reindex(columns=cols)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60):
        _say(table.drop(columns=["warnings"]).astype(object).fillna("").to_string(index=False))
    bad = int(table["error"].fillna("").astype(bool).sum())
    if bad:
        _warn(f"{bad} of {len(table)} file(s) could not be read; see the error column.")
    if out:
        _say(f"wrote {out}")


@app.command()
def export(
    model: str = typer.Argument(..., help="Run directory, model .safetensors file, or 'default'."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The .onnx file to write (default for 'default': the user cache, where predict and the app find it)."),
    check: List[Path] = typer.Option([], "--check", help="Extra real images for the parity check."),
) -> None:
    """Export to ONNX; refuses to write a model whose probabilities differ from PyTorch by more than 1e-4."""
    from .export import export_onnx
    from .models import default_onnx_path

    if out is None:
        if model != "default":
            raise SkinLesionError("Pass --out FILE.onnx (only the default model has a standard place).")
        out = default_onnx_path()
    r = export_onnx(model, out, check_images=check)
    _say(f"wrote {r['path']}: parity on {r['n_checked']} inputs, max probability difference "
         f"{r['max_probability_difference']:.2e}")


@app.command(name="app")
def app_cmd(
    model: str = typer.Option("default", "--model", "-m", help="Model to serve."),
    port: int = typer.Option(8501, "--port", help="Port to listen on."),
    address: str = typer.Option("localhost", "--address", help="Address to bind (0.0.0.0 to serve others)."),
) -> None:
    """Start the Streamlit web app."""
    import subprocess
    from importlib import resources

    from .models import resolve_model_path

    weights = resolve_model_path(model)  # a wrong --model fails here, in one sentence
    script = str(resources.files("skinlesion") / "app.py")
    cmd = [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port), "--server.address", address,
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--", "--model", model]
    _say(f"skinlesion app on http://{address}:{port}")
    server = subprocess.Popen(cmd)
    if model == "default":  # ONNX Runtime serves faster: export once (with its parity check) while the server boots
        from .models import default_onnx_path

        onnx = default_onnx_path()
        if not onnx.exists() or onnx.stat().st_mtime < weights.stat().st_mtime:
            try:
                from .export import export_onnx

                export_onnx("default", onnx)
                _say(f"exported the default model to {onnx}; the app uses ONNX Runtime")
            except (SkinLesionError, OSError) as exc:
                _warn(f"serving with PyTorch: could not export to ONNX ({exc})")
    try:
        raise typer.Exit(server.wait())
    except KeyboardInterrupt:
        server.terminate()
        raise typer.Exit(server.wait())


@app.command()
def prepare(
    data: Path = typer.Argument(..., help="HAM10000 folder, metadata CSV or .npz."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder to write (resumable)."),
    size: int = typer.Option(256, "--size", help="Square side of the cached images."),
    allow_missing: bool = typer.Option(False, "--allow-missing"),
) -> None:
    """Decode and resize every image once into a memory-mapped cache that train/evaluate accept as DATA."""
    from .prepare import prepare as run

    state = run(data, out, size, allow_missing=allow_missing)
    _say(f"cache {out}: {state['done']} images at {size}x{size}; use it as DATA for train and evaluate "
         f"(train on the raw folder with --source-size {size} to get the same pixels)")


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
