"""Training on Lightning: research code (:class:`LesionModule`) apart from engineering (Trainer).

``train(TrainConfig(...))`` writes into ``out``:

- ``config.json``   the resolved training config (rerun it with ``skinlesion train --config``)
- ``split.csv``     the split manifest the run used
- ``metrics.csv``   one row per finished epoch
- ``best.safetensors/.json`` and ``last.safetensors/.json`` (selection: val balanced accuracy)
- ``checkpoints/last.ckpt`` Lightning's own resume state (this run's, read only by ``--resume``)
- ``val_metrics.json`` the best model's val metrics, with the fitted temperature and ECE before/after
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch

from .bundle import Member, ModelConfig, save_bundle
from .errors import Interrupted, SkinLesionError, atomic_text, atomic_write, lock_folder, os_error_in, write_failure
from .metrics import compute_metrics
from .models import create_model
from .preprocess import with_augment
from .recipe import TrainConfig, check_config, config_from  # noqa: F401 (the recipe, re-exported: skinlesion.train.TrainConfig)

MONITOR = "val_balanced_accuracy"


class EarlyStoppingFrom(L.pytorch.callbacks.EarlyStopping):
    """Lightning's early stopping, watching from epoch ``start`` on.

    With deferred re-weighting the epochs before the switch are the plain-loss warm-up: a run must
    not stop there, or ``--drw-epochs`` would be silently never applied. Patience counts from the
    first re-weighted epoch."""

    def __init__(self, *args, start: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = int(start)

    def _should_skip_check(self, trainer) -> bool:
        return super()._should_skip_check(trainer) or trainer.current_epoch < self.start


def class_weights(labels: np.ndarray, mode: str, k: int) -> np.ndarray:
    """Per-class loss weights for ``k`` classes (``mode``: sqrt, weights, or anything else for none)."""
    counts = np.bincount(labels, minlength=k).astype(float)
    counts = np.maximum(counts, 1.0)
    if mode == "weights":
        w = counts.sum() / counts
    elif mode == "sqrt":
        w = np.sqrt(counts.sum() / counts)
    else:
        return np.ones(k)
    return w / (w * counts).sum() * counts.sum()  # mean weight per sample = 1


def _set_epoch(loader, epoch: int) -> None:
    """Tell our EpochSampler the epoch also where DDP wrapped it (Lightning sets only the outer sampler)."""
    stream = getattr(loader, "dataset", None)
    if hasattr(stream, "stream") and hasattr(stream, "set_epoch"):  # litdata chunks (data.stream.StreamSet)
        stream.set_epoch(epoch)
    sampler = getattr(loader, "sampler", None)
    for s in (sampler, getattr(getattr(sampler, "dataset", None), "_sampler", None)):
        if hasattr(s, "set_epoch") and hasattr(s, "seed") and hasattr(s, "weights"):
            s.set_epoch(epoch)


class LesionModule(L.LightningModule):
    """The research code: a timm backbone, weighted cross-entropy, AdamW with warm-up + cosine."""

    def __init__(
        self,
        cfg: dict,
        weights: list[float],
        prior: list[float] | None = None,
        label_set: tuple | None = None,
        counts: list[float] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = cfg
        from .classes import LABEL_SETS, LabelSet

        name, codes = label_set or ("ham10000", LABEL_SETS["ham10000"].codes)  # (name, codes): what the outputs are
        known = LABEL_SETS.get(name)
        self.labels = known if known is not None and tuple(known.codes) == tuple(codes) else LabelSet("custom", tuple(codes))
        self.model = create_model(  # one output per class of the dataset's label set
            cfg["backbone"], len(weights), pretrained=cfg["pretrained"], weights=cfg["weights"], drop_rate=cfg["drop_rate"]
        )
        self.weights_source = self.model.weights_source
        self.register_buffer("class_w", torch.tensor(weights, dtype=torch.float32))
        # the logit-adjusted loss adds log(prior) to the logits it trains (never to those it predicts with)
        self.register_buffer("log_prior", torch.log(torch.tensor(prior or [1.0 / len(weights)] * len(weights), dtype=torch.float32)))
        from .losses import objective

        # the loss (skinlesion.losses): weights, logit adjustment, deferred re-weighting, mixup/CutMix from the recipe
        self.objective = objective(cfg, weights, counts if counts is not None else (prior or [1.0] * len(weights)))
        self._val = []
        self._train_losses = []
        self._seen: list[int] = []
        self.val_metrics: dict = {}
        self.train_loss = float("nan")

    def forward(self, x):
        return self.model(x)

    def on_fit_start(self):
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)

    def _x(self, x):
        return x.to(memory_format=torch.channels_last) if x.device.type == "cuda" else x

    # device augmentation (TrainConfig.augment_on): a training batch of uint8 pixels (data.loader.PixelSet) gets its
    # per-sample parameters here on the host, drawn from (seed, epoch, image), and they travel with it to the device ...
    def on_before_batch_transfer(self, batch, dataloader_idx):
        pixels = self._pixel_set(batch, 3)
        return batch if pixels is None else pixels.with_plan(batch, self.current_epoch)

    # ... where the whole batch is augmented and normalised (skinlesion.augment); other batches pass unchanged
    def on_after_batch_transfer(self, batch, dataloader_idx):
        pixels = self._pixel_set(batch, 4)
        return batch if pixels is None else pixels.augmented(batch)

    def _pixel_set(self, batch, size: int):
        if self._trainer is None or not self.trainer.training:
            return None
        ds = getattr(self.trainer.train_dataloader, "dataset", None)
        return ds if hasattr(ds, "takes") and ds.takes(batch, size) else None

    def training_step(self, batch, _):
        x, y, pos = batch
        if self.cfg.get("extra", {}).get("record_shards") and self.current_epoch == 0:
            self._seen.extend(pos.tolist())
        x, target = self.objective.mix(self._x(x), y)  # mixup/CutMix: soft targets; otherwise the labels as they are
        logits = self(x).float()
        loss = self.objective(logits, target, self.current_epoch)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self._train_losses.append(loss.detach())  # a tensor: no host sync per step (read once per epoch)
        return loss

    def on_train_epoch_start(self):
        self._train_losses.clear()
        # dropout and anything else drawn here: seeded from (seed, epoch), so a resumed run repeats it
        from .data.loader import epoch_seed

        torch.manual_seed(epoch_seed(self.cfg["seed"], self.current_epoch, -2))
        if self.objective.mixup is not None:  # timm's Mixup draws from numpy's and Python's global generators
            import random

            mix_seed = epoch_seed(self.cfg["seed"] + 7919, self.current_epoch, -2)  # apart from the draws above
            np.random.seed(mix_seed % 2**32)
            random.seed(mix_seed)
        _set_epoch(self.trainer.train_dataloader, self.current_epoch)

    def on_train_epoch_end(self):
        if self._seen:  # which images this rank trained on in epoch 0 (DDP shard check)
            out = Path(self.cfg["out"]) / "shards"
            out.mkdir(exist_ok=True)
            (out / f"rank{self.global_rank}.txt").write_text("\n".join(map(str, sorted(self._seen))))
            self._seen = []

    def validation_step(self, batch, _):
        x, y, pos = batch
        logits = self(self._x(x)).float()
        self._val.append((logits.detach(), y, pos))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        logits = torch.cat([v[0] for v in self._val])
        y = torch.cat([v[1] for v in self._val])
        pos = torch.cat([v[2] for v in self._val])
        self._val.clear()
        if self.trainer.world_size > 1:  # gather every rank's shard; drop the sampler's padding
            logits = self.all_gather(logits).flatten(0, 1)
            y = self.all_gather(y).flatten(0, 1)
            pos = self.all_gather(pos).flatten(0, 1)
        pos_np = pos.cpu().numpy()
        _, first = np.unique(pos_np, return_index=True)
        lg, yy = logits.cpu().numpy()[first], y.cpu().numpy()[first]
        probs = torch.softmax(torch.from_numpy(lg), -1).numpy()
        m = compute_metrics(probs, yy, classes=self.labels)
        loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(lg), torch.from_numpy(yy)).item())
        self.train_loss = float(torch.stack(self._train_losses).float().mean()) if self._train_losses else float("nan")
        self.val_metrics = {
            "val_loss": loss,
            "val_accuracy": m["accuracy"],
            MONITOR: m["balanced_accuracy"],
            "val_auc_macro": m["auc_macro"],
            "val_f1_macro": m["f1_macro"],
            "val_n": m["n_images"],
        }
        for k, v in self.val_metrics.items():
            self.log(k, float(v), prog_bar=k in (MONITOR, "val_accuracy"), sync_dist=False, rank_zero_only=False)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}], lr=self.cfg["lr"]
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(1, int(total * self.cfg["warmup_epochs"] / max(1, self.cfg["epochs"])))

        def schedule(step):
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ExportModels(L.Callback):
    """After each validation: append metrics.csv, write last/best as safetensors + JSON (rank 0)."""

    def __init__(self, out: Path, base_config: ModelConfig):
        self.out = out
        self.base = base_config
        self.best = -1.0
        self.t0 = time.time()

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = float(state.get("best", -1.0))

    def on_train_epoch_start(self, trainer, module):
        self.t0 = time.time()

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking or not module.val_metrics or trainer.global_rank != 0:
            return
        epoch = trainer.current_epoch
        row = {
            "epoch": epoch,
            "train_loss": module.train_loss,
            **{k: v for k, v in module.val_metrics.items()},
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "seconds": round(time.time() - self.t0, 2),
        }
        path = self.out / "metrics.csv"
        old = path.read_text() if path.exists() else ""

        def write(tmp):  # the whole file, renamed into place: a full disk never leaves half a row
            with tmp.open("w", newline="") as f:
                f.write(old)
                w = csv.DictWriter(f, fieldnames=list(row))
                if not old:
                    w.writeheader()
                w.writerow(row)

        atomic_write(path, write)
        score = module.val_metrics[MONITOR]
        cfg = replace(
            self.base,
            metrics={**module.val_metrics, "epoch": epoch},
            members=[replace(self.base.members[0], metrics={**module.val_metrics, "epoch": epoch})],
        )
        save_bundle(module.model, cfg, self.out / "last")
        if score > self.best:
            self.best = score
            save_bundle(module.model, cfg, self.out / "best")


class HoldForTests(L.Callback):
    """A test hook, inert unless ``SKINLESION_TEST_HOLD_AFTER_EPOCH=N`` is set: after epoch N is checkpointed it writes
    ``OUT/.held`` and waits for a signal, so a test can interrupt a run in a known state instead of at a moment."""

    def __init__(self, epoch: int, out: Path):
        self.epoch, self.out = epoch, out

    def on_train_epoch_start(self, trainer, module):  # epoch N is validated, exported and checkpointed by now
        if trainer.current_epoch == self.epoch + 1 and trainer.global_rank == 0:
            (self.out / ".held").write_text(str(self.epoch))
            while True:  # until SIGINT/SIGTERM arrives
                time.sleep(0.05)


def _atomic_checkpoint_io():
    """Lightning's checkpoint IO, written to a temporary file and renamed: a full disk leaves the last whole
    checkpoint (or none), never half of one that a resume would then refuse."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            path = Path(path)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                super().save_checkpoint(checkpoint, tmp, storage_options)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    return AtomicCheckpointIO()


def _safe_load(ckpt: Path) -> dict:
    """A resume checkpoint read with ``weights_only=True``: tensors and plain data only, never code."""
    import pickle

    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise SkinLesionError(
            f"The resume checkpoint {ckpt} cannot be loaded safely ({_unpickler_reason(exc)}); it was not loaded, "
            "because loading it could run code. Start a new run with another --out."
        ) from None


def _unpickler_reason(exc: BaseException) -> str:
    """What torch's safe loader found, in a few words (never its advice to load the file unsafely), cut at a word."""
    import re

    text = str(exc)
    found = re.search(r"WeightsUnpickler error: ([^.]*)", text)
    if found:
        reason = found.group(1).strip()
    elif isinstance(exc, EOFError) or "EOF" in text:
        reason = "the file is truncated"
    else:
        reason = f"it is not a checkpoint this run wrote ({type(exc).__name__})"
    if len(reason) > 140:
        reason = reason[:140].rsplit(" ", 1)[0] + " ..."
    return reason


def _trim_metrics(out: Path, from_epoch: int) -> None:
    """On every resume, drop the metrics rows of epochs that will be run again (all of them before a first checkpoint)."""
    path = out / "metrics.csv"
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["epoch"]) < from_epoch]
    if len(keep) != len(rows):
        if not keep:
            path.unlink()
            return

        def write(tmp):
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(keep)

        atomic_write(path, write)


def _stopped_by_disk(exc: BaseException, out: Path) -> SkinLesionError | None:
    """The one sentence for a run a full (or read-only) disk stopped, saying how to continue it; None for other errors."""
    import errno

    err = os_error_in(exc)
    if err is None or err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        return None
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return SkinLesionError(
            f"Training stopped: could not write into {out} ({err.strerror}); free some space and continue with "
            f"`skinlesion train --resume --out {out}` (every finished epoch is kept)."
        )
    return SkinLesionError(write_failure(out, err, "--out"))


def make_logger(cfg: TrainConfig, out: Path):
    """Lightning's logger for ``--logger`` (False for none): TensorBoard into OUT/tensorboard, CSV into OUT/logs,
    MLflow to ``--tracking-uri`` (else MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db). One folder per run, so a resumed run
    goes on in the same place. The default (auto) is TensorBoard where it is installed, else CSV."""
    from importlib.util import find_spec

    kind = cfg.logger
    if kind == "auto":
        kind = "tensorboard" if find_spec("tensorboard") or find_spec("tensorboardX") else "csv"
    if kind == "none":
        return False
    if kind == "tensorboard" and find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
        if kind == "tensorboard":
            raise SkinLesionError(
                "--logger tensorboard needs the tensorboard package; install it with `pip install 'skinlesion[tensorboard]'`, "
                "or pass --logger csv."
            )
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out), name="logs", version="")
    if find_spec("mlflow") is None:
        raise SkinLesionError("--logger mlflow needs the mlflow package; install it with `pip install 'skinlesion[mlflow]'`.")
    from lightning.pytorch.loggers import MLFlowLogger

    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # MLflow's own default store is a SQLite database (its file store is retired); ours lives in ./mlruns
        (Path.cwd() / "mlruns").mkdir(exist_ok=True)
        uri = f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"
    return MLFlowLogger(experiment_name="skinlesion", run_name=out.name, tracking_uri=uri)


def build_loaders(cfg: TrainConfig, ds, manifest, start_epoch: int = 0):
    """Resolve ``cfg`` against the data and build the train/val loaders exactly as training uses them.

    Returns (cfg, preprocess, train positions, val positions, train loader, val loader).
    """
    import torch

    from .data.loader import EpochSampler, ImageSet, PixelSet, augment_where, make_loader
    from .models import resolve_preprocess

    by_id = {iid: i for i, iid in enumerate(ds.meta["image_id"])}
    unknown = [i for i in manifest["image_id"] if i not in by_id]
    if unknown:
        raise SkinLesionError(
            f"{len(unknown)} image(s) in the split {Path(cfg.split).name} are not in {cfg.data} "
            f"(first: {unknown[0]}); make the split from this dataset."
        )
    tr = np.array([by_id[i] for i in manifest.loc[manifest["split"] == "train", "image_id"]])
    va = np.array([by_id[i] for i in manifest.loc[manifest["split"] == "val", "image_id"]])
    if len(tr) == 0 or len(va) == 0:
        raise SkinLesionError(f"The split {Path(cfg.split).name} needs train and val images (train {len(tr)}, val {len(va)}).")
    prep = resolve_preprocess(
        cfg.backbone,
        ds,
        input_size=cfg.input_size,
        source_size=cfg.source_size,
        crop=cfg.crop,
        source_jpeg_quality=cfg.source_jpeg_quality or cfg.extra.get("source_jpeg_quality"),
    )
    prep = with_augment(prep, cfg.augment)
    where = augment_where(cfg.augment_on, ds, prep)
    cfg = replace(
        cfg,
        input_size=prep.input_size,
        source_size=prep.source_size,
        crop=prep.crop,
        source_jpeg_quality=prep.source_jpeg_quality,
        augment_on=where,
    )
    gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    val_loader = make_loader(ImageSet(ds, va, prep.eval_transform()), cfg.batch_size * 2, num_workers=cfg.num_workers, pin_memory=gpu)
    if ds.layout == "litdata":  # streamed from the chunks: litdata shuffles and shards (skinlesion.data.shards)
        from .data.loader import default_workers
        from .data.stream import StreamSet, stream_loader

        if cfg.balance == "sampler":
            raise SkinLesionError(
                "--balance sampler draws images at random, which streaming chunks cannot; use --balance sqrt or weights with litdata chunks."
            )
        train_set = StreamSet(ds, tr, prep, mode=where, seed=cfg.seed, batch_size=cfg.batch_size, epoch=start_epoch)
        workers = default_workers(len(tr)) if cfg.num_workers is None else cfg.num_workers
        train_loader = stream_loader(train_set, cfg.batch_size, num_workers=workers, pin_memory=gpu, drop_last=len(tr) > cfg.batch_size)
        return cfg, prep, tr, va, train_loader, val_loader
    labels = ds.labels[tr]
    w = 1.0 / np.bincount(labels, minlength=len(ds.label_set))[labels] if cfg.balance == "sampler" else None
    # every epoch's order and augmentation are a function of (seed, epoch): a resumed run repeats them exactly
    sampler = EpochSampler(len(tr), cfg.seed, weights=w, epoch=start_epoch)
    workers = cfg.num_workers
    if where == "device":
        # uint8 batches, augmented on the training device; a cache that fits in its memory is kept there and the
        # loader hands out row numbers; otherwise workers stream pinned uint8 batches, two per worker ahead
        train_set = PixelSet(ds, tr, prep, seed=cfg.seed, resident=gpu)
        if workers is None and train_set.store is not None and (train_set.resident or not gpu):
            workers = 0  # nothing to decode: indexing the array (or the device copy) is the loader's whole work
    else:
        train_set = ImageSet(ds, tr, prep.train_transform(), seed=cfg.seed)
    train_loader = make_loader(
        train_set,
        cfg.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=gpu,
        seed=cfg.seed,
        drop_last=len(tr) > cfg.batch_size,
    )
    return cfg, prep, tr, va, train_loader, val_loader


def train(cfg: TrainConfig, *, resume: bool = False, finish_model: bool = True) -> Path:
    """Train a model; see the module docstring for what lands in ``cfg.out``.

    ``finish_model=False`` (cross-validation members) skips the post-training fit: an ensemble
    fits temperature, TTA choice and OOD score on its out-of-fold predictions instead.
    """
    import lightning as L
    import torch

    from .data.ham10000 import load_dataset
    from .data.split import read_manifest

    from .runtime import threads_for

    # the intra-op pool at its default (every usable core): an earlier in-process Predictor may have sized it to
    # its own concurrency, and a run must not compute differently (reduction order) because of that
    torch.set_num_threads(threads_for(1))
    out = Path(cfg.out)
    lock = lock_folder(out, "training run")  # noqa: F841 (held until this function returns)
    ckpt = out / "checkpoints" / "last.ckpt"
    if resume:
        if not (out / "config.json").exists():
            raise SkinLesionError(f"Nothing to resume in {out}: it has no config.json from an earlier run.")
        saved = json.loads((out / "config.json").read_text())
        keep = {k: getattr(cfg, k) for k in ("progress", "num_workers", "logger", "tracking_uri")}
        cfg = TrainConfig(**{**saved, **keep})
    elif ckpt.exists():
        raise SkinLesionError(f"{out} already holds a training run; pass --resume to continue it or choose a new --out.")

    start_epoch = 0
    if resume and ckpt.exists():
        state = _safe_load(ckpt)
        start_epoch = int(state["epoch"]) + 1
        del state
    elif resume:
        print(f"no checkpoint yet: starting from epoch 0 ({out} has no checkpoint to continue from)", flush=True)
    L.seed_everything(cfg.seed, workers=True)
    ds = load_dataset(cfg.data, on_conflict=cfg.on_conflict)
    manifest = read_manifest(cfg.split)
    cfg, prep, tr, va, train_loader, val_loader = build_loaders(cfg, ds, manifest, start_epoch)
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    atomic_write(out / "split.csv", lambda t: manifest.to_csv(t, index=False))
    gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    precision = cfg.precision or ("bf16-mixed" if gpu else "32-true")
    k = len(ds.label_set)
    weights = class_weights(ds.labels[tr], cfg.balance if cfg.balance != "sampler" else "none", k)

    counts = np.bincount(ds.labels[tr], minlength=k).astype(float)
    labels = (ds.label_set.name, list(ds.label_set.codes))
    module = LesionModule(asdict(cfg), weights.tolist(), (np.maximum(counts, 1) / counts.sum()).tolist(), labels, counts.tolist())
    base = ModelConfig(
        label_set=ds.label_set.name,
        classes=list(ds.label_set.codes),
        preprocess=prep.to_dict(),
        members=[Member(cfg.backbone, module.weights_source, seed=cfg.seed)],
        low_res="upsample" if cfg.source_size else "none",
        train=asdict(cfg),
    )
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [
        ExportModels(out, base),
        EarlyStoppingFrom(monitor=MONITOR, mode="max", patience=cfg.patience, start=cfg.epochs - cfg.drw_epochs if cfg.drw_epochs else 0),
        # resume state after every epoch: checkpoints/last.ckpt (overwritten; monitor=None keeps the latest)
        ModelCheckpoint(
            dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1, every_n_epochs=1, enable_version_counter=False
        ),
    ]
    hold = os.environ.get("SKINLESION_TEST_HOLD_AFTER_EPOCH")
    if hold is not None and hold.isdigit():
        callbacks.append(HoldForTests(int(hold), out))
    devices = int(cfg.devices) if str(cfg.devices).isdigit() else cfg.devices
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=precision,
        callbacks=callbacks,
        plugins=[_atomic_checkpoint_io()],
        logger=make_logger(cfg, out),
        log_every_n_steps=10,
        enable_progress_bar=cfg.progress,
        num_sanity_val_steps=0,
        deterministic=False,
        default_root_dir=str(out),
        enable_model_summary=False,
    )
    if trainer.global_rank == 0:  # what `info` and `split` say of the data, and classes with no training image
        from .data.describe import empty_classes, training_warnings

        said = training_warnings(ds, tr) if finish_model else empty_classes(ds.labels[tr], ds.label_set)  # an ensemble said the data's once
        for w in said:
            print(f"warning: {w}", file=sys.stderr, flush=True)
    if resume:
        _trim_metrics(out, start_epoch)  # rows of epochs without a checkpoint are run again: never a duplicate epoch
    if start_epoch:
        print(f"resuming {out} after epoch {start_epoch} of {cfg.epochs}", flush=True)
    hint = f"continue with `skinlesion train --resume --out {out}` (every finished epoch is kept)"
    try:
        if start_epoch:
            trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt), weights_only=True)
        else:
            trainer.fit(module, train_loader, val_loader)
    except SystemExit:  # Lightning turns Ctrl-C into sys.exit(1) after its own shutdown
        if trainer.interrupted:
            raise Interrupted(hint) from None
        raise
    except Exception as exc:
        stopped = _stopped_by_disk(exc, out)
        if stopped is not None:
            raise stopped from None
        raise
    finally:
        import signal

        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # Lightning ignores further Ctrl-C while it shuts down
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if trainer.interrupted:  # an interrupt Lightning caught and returned from: not a finished run
        raise Interrupted(hint)
    if trainer.global_rank == 0 and finish_model:
        from .finish import finish_run

        finish_run(out, ds, tr, va)
    return out


def copy_model(run_dir: str | Path, dest: str | Path, *, half: bool = True) -> Path:
    """Copy a run's model (with its auxiliary tensors) to ``dest`` (no suffix), in fp16 by default."""
    from .bundle import copy_bundle, resolve_model_path

    return copy_bundle(resolve_model_path(run_dir), dest, half=half)
