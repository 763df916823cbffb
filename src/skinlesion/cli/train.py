"""``skinlesion train``, ``evaluate``, ``export`` and ``card``: a model from a dataset, its report, its files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import SkinLesionError
from .common import ON_CONFLICT_HELP, OnConflict, _progress, _say, _warn, on_conflict_of


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
    backbone: Optional[str] = typer.Option(None, help="Any timm model name \\[default: resnet50]."),
    pretrained: Optional[bool] = typer.Option(
        None,
        "--pretrained/--no-pretrained",
        help="Start from ImageNet weights (timm download, or offline packages for tf_efficientnet_lite0..2).",
    ),
    weights: Optional[Path] = typer.Option(None, "--weights", help="ImageNet/backbone weights as a .safetensors file."),
    input_size: Optional[int] = typer.Option(None, help="Network input size \\[default: backbone's, or 4x tiny images]."),
    source_size: Optional[int] = typer.Option(
        None, help="Resize every image to this square size first \\[default: tiny images' or a cache's own size]; matches `prepare --size`."
    ),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs \\[default: 30]."),
    batch_size: Optional[int] = typer.Option(None, help="\\[default: 64]"),
    lr: Optional[float] = typer.Option(None, help="Peak AdamW learning rate \\[default: 1e-3]."),
    weight_decay: Optional[float] = typer.Option(None, help="\\[default: 0.05]"),
    balance: Optional[str] = typer.Option(
        None, help="Class imbalance: sqrt (inverse-sqrt-frequency loss weights, default), weights, sampler, none."
    ),
    label_smoothing: Optional[float] = typer.Option(None, help="\\[default: 0.05]"),
    patience: Optional[int] = typer.Option(None, help="Early stopping patience in epochs, on val balanced accuracy \\[default: 8]."),
    seed: Optional[int] = typer.Option(None, help="\\[default: 42]"),
    num_workers: Optional[int] = typer.Option(None, help="DataLoader workers \\[default: sized to the machine]."),
    accelerator: Optional[str] = typer.Option(None, help="auto (default), cpu or gpu."),
    devices: Optional[str] = typer.Option(None, help="Devices per node, e.g. 2 (DDP) \\[default: auto]."),
    num_nodes: Optional[int] = typer.Option(None, help="Nodes for multi-node DDP \\[default: 1]."),
    strategy: Optional[str] = typer.Option(None, help="Lightning strategy, e.g. ddp \\[default: auto]."),
    precision: Optional[str] = typer.Option(None, help="\\[default: bf16-mixed on GPU, 32-true on CPU]"),
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
        "vignette (0-1) \\[default: 0.4, 0.4, 0.1, 0.25].",
    ),
    loss: Optional[str] = typer.Option(
        None,
        "--loss",
        help="cross-entropy (default; class weights from --balance), logit-adjusted (Menon et al. 2021) or balanced-softmax "
        "(Ren et al. 2020; the logit adjustment with tau 1); both with --balance none.",
    ),
    loss_tau: Optional[float] = typer.Option(None, "--loss-tau", help="The logit adjustment of --loss logit-adjusted \\[default: 1]."),
    drw_epochs: Optional[int] = typer.Option(
        None,
        "--drw-epochs",
        help="Deferred re-weighting (Cao et al. 2019): class-balanced loss weights for the last N epochs, the plain loss before "
        "(with --balance none) \\[default: 0, off].",
    ),
    mixup: Optional[float] = typer.Option(None, "--mixup", help="Mixup alpha (timm's Mixup, e.g. 0.2) \\[default: 0, off]."),
    cutmix: Optional[float] = typer.Option(None, "--cutmix", help="CutMix alpha (e.g. 1.0) \\[default: 0, off]."),
    mix_prob: Optional[float] = typer.Option(None, "--mix-prob", help="Share of batches mixed by --mixup/--cutmix \\[default: 1]."),
    logger: Optional[str] = typer.Option(
        None,
        "--logger",
        help="Experiment tracking: tensorboard (into OUT/tensorboard), csv (OUT/logs), mlflow (--tracking-uri), none, or auto "
        "\\[default: tensorboard where installed, else csv].",
    ),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="With --logger mlflow: the tracking URI \\[default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db]."
    ),
    decision_rule: Optional[str] = typer.Option(
        None,
        "--decision-rule",
        help="The rule the model names its top class by: most-probable (accuracy, default) or balanced (balanced accuracy); "
        "both are fitted and stored, predict --rule switches.",
    ),
    on_conflict: Optional[OnConflict] = typer.Option(None, "--on-conflict", help=ON_CONFLICT_HELP, show_default=False),
    augment_on: Optional[str] = typer.Option(
        None,
        "--augment-on",
        help="Where the training augmentation runs: device (whole batches on the GPU, or the CPU), workers (image by image "
        "on DataLoader workers) or auto \\[default: device when the images have one size: a cache, .npz or --source-size].",
    ),
) -> None:
    """Train a model on a split, or a cross-validated ensemble with --folds; writes models, config, manifest and metrics into --out.

    Defaults live in one place, skinlesion.recipe.TrainConfig; --config reruns a run from its resolved config.json.
    """
    from ..recipe import check_config, config_from  # no torch yet: a bad option is refused at once

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
            on_conflict=on_conflict.value if on_conflict else None,
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
    on_conflict_of(cfg.data if isinstance(cfg.data, list) else [cfg.data], on_conflict)  # refused with one dataset
    if folds is None and not cfg.split and not resume:
        raise SkinLesionError("Pass --split FILE (from `skinlesion split`), or --folds K for a cross-validated ensemble.")
    if folds is not None and split is not None:
        raise SkinLesionError("--folds makes its own lesion-grouped folds of all images; leave out --split.")
    check_config(cfg)
    if folds is not None:
        from ..cv import train_cv

        path = train_cv(cfg, folds, metadata=metadata)
        _say(f"ensemble written to {path} (out-of-fold report: {out / 'oof_report' / 'report.md'})")
        return
    from ..train import train as run

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
    from ..recipe import read_config

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
    from ..evaluate import evaluate_model

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
        from ..hub_export import export_hub

        if out is None:
            raise SkinLesionError("--format hub writes a folder; pass it with --out DIR.")
        _say(f"wrote {export_hub(model, out)}: upload it with huggingface_hub.upload_folder, load it with --model DIR or hf://OWNER/NAME")
        return
    if fmt != "onnx":
        raise SkinLesionError(f"Unknown export format {fmt!r}; use onnx or hub.")
    from ..export import export_onnx

    r = export_onnx(model, out, check_images=check)
    _say(f"wrote {r['path']}: parity on {r['n_checked']} inputs, max probability difference {r['max_probability_difference']:.2e}")


def card(
    model: str = typer.Argument("default", help="Run directory, model .safetensors file, or 'default'."),
    out: Path = typer.Option(Path("MODEL_CARD.md"), "--out", "-o", help="Markdown file to write."),
) -> None:
    """Write the model card, generated from the model bundle (numbers recomputed from its stored OOF predictions)."""
    from ..card import write_card

    _say(f"wrote {write_card(model, out)}")
