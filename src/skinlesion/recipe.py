"""The training recipe: :class:`TrainConfig`, read from a run's ``config.json`` and checked before any work.

It imports neither torch nor Lightning, so ``skinlesion train`` refuses a bad option in one sentence
before the seconds (and the gigabyte) those imports cost; :mod:`skinlesion.train` runs the recipe.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SkinLesionError
from .preprocess import Preprocess, with_augment


@dataclass
class TrainConfig:
    data: str | list  # one dataset, or several combined (skinlesion.data.combine)
    split: str
    out: str
    backbone: str = "resnet50"
    pretrained: bool = False
    weights: str | None = None
    input_size: int | None = None  # default: backbone's size, or 4x the images' size when they are tiny
    # first resize every image to this square size (see skinlesion.preprocess); default: the images' own
    # size when they are tiny (<= 64 px) or come from a prepared cache
    source_size: int | None = None
    crop: str | None = None  # "center" or "none"; default: center for tiny (DermaMNIST-made) images, else none
    source_jpeg_quality: int | None = None  # default: the quality tiny JPEG files were saved with (models.resolve_preprocess)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    balance: str = "sqrt"  # sqrt | weights | sampler | none
    label_smoothing: float = 0.05
    drop_rate: float = 0.2
    patience: int = 8
    seed: int = 42
    num_workers: int | None = None
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None  # default: bf16-mixed on GPU, 32-true on CPU
    progress: bool = True
    augment: dict = field(default_factory=dict)  # training augmentation strengths (skinlesion.preprocess.AUGMENT)
    decision_rule: str = "most-probable"  # the rule the model names its top class by (skinlesion.posthoc.RULES)
    # the training objective (skinlesion.losses): cross-entropy (weights from --balance), logit-adjusted (Menon et al.,
    # ICLR 2021: CE on logits + loss_tau * log prior) or balanced-softmax (Ren et al., NeurIPS 2020: the same with tau 1)
    loss: str = "cross-entropy"
    loss_tau: float = 1.0
    drw_epochs: int = 0  # deferred re-weighting (Cao et al. 2019): class-balanced weights for the last N epochs
    mixup: float = 0.0  # mixup alpha (timm.data.Mixup); 0: off
    cutmix: float = 0.0  # CutMix alpha; 0: off (with both on, each batch is one or the other)
    mix_prob: float = 1.0  # the share of batches mixed
    # experiment tracking (Lightning's loggers): tensorboard (into OUT/tensorboard), csv (OUT/logs), mlflow (tracking_uri,
    # default MLFLOW_TRACKING_URI or ./mlruns/mlflow.db), none; auto (default): tensorboard where installed, else csv.
    # How a run is watched, not what it computes
    logger: str = "auto"
    tracking_uri: str | None = None
    # where the training augmentation runs: "device" (whole batches on the training device, skinlesion.augment),
    # "workers" (image by image on DataLoader workers, PIL), "auto": device when the images have one size (a
    # prepared cache, .npz, small images or --source-size), else workers; config.json records the choice
    augment_on: str = "auto"
    # several datasets combined: an image id a later one gives another diagnosis keeps the first one's label
    # ("keep-first") or is left out of both ("drop"); skinlesion.data.combine counts and names the conflicts
    on_conflict: str = "keep-first"
    extra: dict = field(default_factory=dict)


def read_config(p: Path) -> dict:
    """A run's ``config.json`` as a dict, or one sentence saying why it cannot be read."""
    if not p.is_file():
        raise SkinLesionError(f"The config {p} does not exist; pass the config.json of an earlier run.")
    try:
        saved = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SkinLesionError(f"The config {p} is not valid JSON ({exc}).") from None
    if not isinstance(saved, dict):
        raise SkinLesionError(f"The config {p} must hold a JSON object (a run's config.json).")
    return saved


def config_from(path: str | Path | None = None, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a run's ``config.json`` (or the defaults), with ``overrides`` on top."""
    base: dict = {"data": "", "split": "", "out": ""}
    if path is not None:
        p = Path(path)
        saved = read_config(p)
        unknown = sorted(set(saved) - set(TrainConfig.__dataclass_fields__) - {"folds"})
        if unknown:
            raise SkinLesionError(
                f"The config {p.name} has unknown field(s) {', '.join(unknown)}; pass a config.json written by skinlesion train."
            )
        base.update({k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    extra = {**base.get("extra", {}), **overrides.pop("extra", {})}
    augment = {**base.get("augment", {}), **overrides.pop("augment", {})}
    return TrainConfig(**{**base, **overrides, "extra": extra, "augment": augment})


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Every numeric option in its range, checked before any work starts (one sentence each)."""

    def need(ok: bool, msg: str):
        if not ok:
            raise SkinLesionError(msg)

    need(cfg.epochs >= 1, f"--epochs {cfg.epochs} must be at least 1.")
    need(cfg.batch_size >= 1, f"--batch-size {cfg.batch_size} must be at least 1.")
    need(cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr {cfg.lr} must be a positive number (1e-3 is usual).")
    need(cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay), f"--weight-decay {cfg.weight_decay} must be zero or positive.")
    need(0 <= cfg.label_smoothing < 1, f"--label-smoothing {cfg.label_smoothing} must be in [0, 1).")
    need(cfg.patience >= 1, f"--patience {cfg.patience} must be at least 1.")
    need(cfg.input_size is None or 8 <= cfg.input_size <= 2048, f"--input-size {cfg.input_size} must be 8 to 2048 pixels.")
    need(cfg.source_size is None or 8 <= cfg.source_size <= 4096, f"--source-size {cfg.source_size} must be 8 to 4096 pixels.")
    need(cfg.num_workers is None or cfg.num_workers >= 0, f"--num-workers {cfg.num_workers} must be zero or more.")
    need(cfg.num_nodes >= 1, f"--num-nodes {cfg.num_nodes} must be at least 1.")
    need(cfg.balance in ("sqrt", "weights", "sampler", "none"), f"Unknown --balance {cfg.balance!r}; use sqrt, weights, sampler or none.")
    with_augment(Preprocess(), cfg.augment)  # names and ranges, before any work starts
    need(
        cfg.decision_rule in ("most-probable", "balanced"),
        f"Unknown --decision-rule {cfg.decision_rule!r}; use most-probable or balanced.",
    )
    need(
        cfg.loss in ("cross-entropy", "logit-adjusted", "balanced-softmax"),
        f"Unknown --loss {cfg.loss!r}; use cross-entropy, logit-adjusted or balanced-softmax.",
    )
    need(0 < cfg.loss_tau <= 5 and math.isfinite(cfg.loss_tau), f"--loss-tau {cfg.loss_tau} must be above 0 and at most 5 (1 is usual).")
    need(
        cfg.loss_tau == 1.0 or cfg.loss == "logit-adjusted",
        f"--loss-tau sets the logit adjustment of --loss logit-adjusted; pass --loss logit-adjusted with it (not {cfg.loss}).",
    )
    need(0 <= cfg.drw_epochs < cfg.epochs, f"--drw-epochs {cfg.drw_epochs} must be at least 0 and fewer than --epochs {cfg.epochs}.")
    need(
        not cfg.drw_epochs or (cfg.loss == "cross-entropy" and cfg.balance == "none"),
        "--drw-epochs re-weights the classes itself in the last epochs; pass it with --loss cross-entropy --balance none.",
    )
    for flag, alpha in (("--mixup", cfg.mixup), ("--cutmix", cfg.cutmix)):
        need(0 <= alpha <= 10 and math.isfinite(alpha), f"{flag} {alpha} must be an alpha of 0 (off) to 10 (0.2-1.0 is usual).")
    need(0 < cfg.mix_prob <= 1, f"--mix-prob {cfg.mix_prob} must be above 0 and at most 1.")
    need(
        cfg.logger in ("auto", "tensorboard", "csv", "mlflow", "none"),
        f"Unknown --logger {cfg.logger!r}; use tensorboard, csv, mlflow, none or auto.",
    )
    need(
        cfg.tracking_uri is None or cfg.logger == "mlflow", "--tracking-uri is where MLflow records the run; pass --logger mlflow with it."
    )
    need(cfg.on_conflict in ("keep-first", "drop"), f"Unknown --on-conflict {cfg.on_conflict!r}; use keep-first or drop.")
    need(cfg.augment_on in ("auto", "device", "workers"), f"Unknown --augment-on {cfg.augment_on!r}; use auto, device or workers.")
    need(
        cfg.loss == "cross-entropy" or cfg.balance == "none",
        f"--loss {cfg.loss} balances the classes itself; pass --balance none with it (not --balance {cfg.balance}).",
    )
    if str(cfg.devices).isdigit():
        import torch  # only to count the devices a --devices N asks for

        n = int(cfg.devices)
        have = (
            torch.cuda.device_count()
            if cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
            else (os.cpu_count() or 1)
        )
        need(
            1 <= n <= max(have, 1) * (1 if torch.cuda.is_available() else 4),
            f"--devices {n} is more than this machine has ({have}); use --devices auto or a smaller number.",
        )
    return cfg
