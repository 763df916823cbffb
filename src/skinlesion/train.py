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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .classes import CODES
from .errors import SkinLesionError

MONITOR = "val_balanced_accuracy"


@dataclass
class TrainConfig:
    data: str
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
    extra: dict = field(default_factory=dict)


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    counts = np.bincount(labels, minlength=len(CODES)).astype(float)
    counts = np.maximum(counts, 1.0)
    if mode == "weights":
        w = counts.sum() / counts
    elif mode == "sqrt":
        w = np.sqrt(counts.sum() / counts)
    else:
        return np.ones(len(CODES))
    return w / (w * counts).sum() * counts.sum()  # mean weight per sample = 1


def _module_class():
    import lightning as L
    import torch

    from .metrics import compute_metrics
    from .models import create_model

    class LesionModule(L.LightningModule):
        """The research code: a timm backbone, weighted cross-entropy, AdamW with warm-up + cosine."""

        def __init__(self, cfg: dict, weights: list[float]):
            super().__init__()
            self.save_hyperparameters()
            self.cfg = cfg
            self.model, self.weights_source = create_model(
                cfg["backbone"], len(CODES), pretrained=cfg["pretrained"], weights=cfg["weights"], drop_rate=cfg["drop_rate"])
            self.register_buffer("class_w", torch.tensor(weights, dtype=torch.float32))
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

        def training_step(self, batch, _):
            x, y, pos = batch
            if self.cfg.get("extra", {}).get("record_shards") and self.current_epoch == 0:
                self._seen.extend(pos.tolist())
            logits = self(self._x(x))
            loss = torch.nn.functional.cross_entropy(
                logits.float(), y, weight=self.class_w, label_smoothing=self.cfg["label_smoothing"])
            self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
            self._train_losses.append(float(loss.detach()))
            return loss

        def on_train_epoch_start(self):
            self._train_losses.clear()

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
            m = compute_metrics(probs, yy)
            loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(lg), torch.from_numpy(yy)).item())
            self.train_loss = float(np.mean(self._train_losses)) if self._train_losses else float("nan")
            self.val_metrics = {"val_loss": loss, "val_accuracy": m["accuracy"], MONITOR: m["balanced_accuracy"],
                                "val_auc_macro": m["auc_macro"], "val_f1_macro": m["f1_macro"], "val_n": m["n_images"]}
            for k, v in self.val_metrics.items():
                self.log(k, float(v), prog_bar=k in (MONITOR, "val_accuracy"), sync_dist=False, rank_zero_only=False)

        def configure_optimizers(self):
            decay, no_decay = [], []
            for n, p in self.model.named_parameters():
                (no_decay if p.ndim <= 1 else decay).append(p)
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg["weight_decay"]},
                                     {"params": no_decay, "weight_decay": 0.0}], lr=self.cfg["lr"])
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warm = max(1, int(total * self.cfg["warmup_epochs"] / max(1, self.cfg["epochs"])))

            def schedule(step):
                if step < warm:
                    return (step + 1) / warm
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return LesionModule


def _export_callback_class():
    import lightning as L

    from .models import ModelConfig, save_model

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
            row = {"epoch": epoch, "train_loss": module.train_loss,
                   **{k: v for k, v in module.val_metrics.items()},
                   "lr": trainer.optimizers[0].param_groups[0]["lr"], "seconds": round(time.time() - self.t0, 2)}
            path = self.out / "metrics.csv"
            new = not path.exists()
            with path.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
            score = module.val_metrics[MONITOR]
            cfg = ModelConfig(**{**self.base.to_dict(), "metrics": {**module.val_metrics, "epoch": epoch}})
            save_model(module.model, cfg, self.out / "last")
            if score > self.best:
                self.best = score
                save_model(module.model, cfg, self.out / "best")

    return ExportModels


def _trim_metrics(out: Path, from_epoch: int) -> None:
    """On resume, drop metrics rows of epochs that will be run again."""
    path = out / "metrics.csv"
    if not path.exists():
        return
    rows = list(csv.DictReader(path.open()))
    keep = [r for r in rows if int(r["epoch"]) < from_epoch]
    if len(keep) != len(rows):
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(keep)


def resolve(cfg: TrainConfig, ds) -> TrainConfig:
    """Fill in the defaults that depend on the data (input size for tiny images)."""
    from .data.loader import SMALL_SIDE, jpeg_quality, native_size

    native = native_size(ds)
    if cfg.source_size is None and (native <= SMALL_SIDE or ds.layout == "cache"):
        cfg.source_size = native  # a cache's images are the source stage of preprocessing
    if cfg.input_size is None:
        cfg.input_size = 4 * native if native <= SMALL_SIDE else 224
    if cfg.crop is None:  # DermaMNIST made its tiny images from the central square of each photo
        cfg.crop = "center" if native <= SMALL_SIDE else "none"
    if native <= SMALL_SIDE and "source_jpeg_quality" not in cfg.extra:
        cfg.extra = {**cfg.extra, "source_jpeg_quality": jpeg_quality(ds)}  # tiny JPEGs: match their artefacts
    if cfg.crop not in ("center", "none"):
        raise SkinLesionError(f"Unknown crop {cfg.crop!r}; use center or none.")
    if cfg.balance not in ("sqrt", "weights", "sampler", "none"):
        raise SkinLesionError(f"Unknown --balance {cfg.balance!r}; use sqrt, weights, sampler or none.")
    return cfg


def build_loaders(cfg: TrainConfig, ds, manifest):
    """Resolve ``cfg`` against the data and build the train/val loaders exactly as training uses them.

    Returns (cfg, preprocess, train positions, val positions, train loader, val loader).
    """
    import torch

    from .data.loader import ImageSet, make_loader
    from .models import default_preprocess

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
    cfg = resolve(cfg, ds)
    prep = default_preprocess(cfg.backbone, cfg.input_size, cfg.source_size, cfg.crop,
                              cfg.extra.get("source_jpeg_quality"))
    gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    labels = ds.labels[tr]
    sampler = None
    if cfg.balance == "sampler":
        w = 1.0 / np.bincount(labels, minlength=len(CODES))[labels]
        sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(tr), replacement=True)
    train_loader = make_loader(ImageSet(ds, tr, prep.train_transform()), cfg.batch_size, shuffle=True, sampler=sampler,
                               num_workers=cfg.num_workers, pin_memory=gpu, seed=cfg.seed, drop_last=len(tr) > cfg.batch_size)
    val_loader = make_loader(ImageSet(ds, va, prep.eval_transform()), cfg.batch_size * 2,
                             num_workers=cfg.num_workers, pin_memory=gpu)
    return cfg, prep, tr, va, train_loader, val_loader


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Train a model; see the module docstring for what lands in ``cfg.out``."""
    import lightning as L
    import torch

    from .data.ham10000 import load_dataset
    from .data.split import read_manifest
    from .models import ModelConfig

    out = Path(cfg.out)
    ckpt = out / "checkpoints" / "last.ckpt"
    if resume:
        if not (out / "config.json").exists():
            raise SkinLesionError(f"Nothing to resume in {out}: it has no config.json from an earlier run.")
        saved = json.loads((out / "config.json").read_text())
        keep = {k: getattr(cfg, k) for k in ("progress", "num_workers")}
        cfg = TrainConfig(**{**saved, **keep})
    elif ckpt.exists():
        raise SkinLesionError(f"{out} already holds a training run; pass --resume to continue it or choose a new --out.")

    L.seed_everything(cfg.seed, workers=True)
    ds = load_dataset(cfg.data)
    manifest = read_manifest(cfg.split)
    cfg, prep, tr, va, train_loader, val_loader = build_loaders(cfg, ds, manifest)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    manifest.to_csv(out / "split.csv", index=False)
    gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    precision = cfg.precision or ("bf16-mixed" if gpu else "32-true")
    weights = class_weights(ds.labels[tr], cfg.balance if cfg.balance != "sampler" else "none")

    Module = _module_class()
    module = Module(asdict(cfg), weights.tolist())
    base = ModelConfig(backbone=cfg.backbone, preprocess=prep.to_dict(), pretrained=module.weights_source,
                       low_res="upsample" if cfg.source_size else "none", train=asdict(cfg))
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    callbacks = [
        _export_callback_class()(out, base),
        EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.patience),
        # resume state after every epoch: checkpoints/last.ckpt (overwritten; monitor=None keeps the latest)
        ModelCheckpoint(dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        every_n_epochs=1, enable_version_counter=False),
    ]
    devices = int(cfg.devices) if str(cfg.devices).isdigit() else cfg.devices
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, precision=precision, callbacks=callbacks, logger=False,
        enable_progress_bar=cfg.progress, num_sanity_val_steps=0, deterministic=False,
        default_root_dir=str(out), enable_model_summary=False,
    )
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)  # this run's own file, written above
        _trim_metrics(out, int(state["epoch"]) + 1)
        print(f"resuming {out} after epoch {int(state['epoch']) + 1} of {cfg.epochs}")
        del state
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt))
    else:
        trainer.fit(module, train_loader, val_loader)
    if trainer.global_rank == 0:
        finish(out, ds, tr, va)
    return out


def finish(out: Path, ds, train_positions, val_positions) -> dict:
    """For the best model: fit the temperature and the OOD score, store them, write val_metrics.json."""
    from .calibration import ece, fit_temperature, softmax
    from .evaluate import dataset_logits
    from .metrics import compute_metrics
    from .models import ModelConfig, load_model, save_model

    net, mcfg = load_model(out / "best.safetensors")
    labels = ds.labels[val_positions]
    candidates = {}
    for tta in (False, True):  # keep TTA only if it helps the selection metric on val
        lg = dataset_logits(net, mcfg.prep, ds, val_positions, tta=tta)
        t_ = fit_temperature(lg, labels)
        candidates[tta] = (compute_metrics(softmax(lg, t_), labels)["balanced_accuracy"], lg, t_)
    tta = candidates[True][0] > candidates[False][0]
    _, logits, t = candidates[tta]
    before = ece(softmax(logits, 1.0), labels)
    probs = softmax(logits, t)
    metrics = compute_metrics(probs, labels)
    metrics.update({"temperature": t, "ece_uncalibrated": before, "subset": "val", "tta": tta})
    mcfg.tta = tta
    from .ood import fit_for_model

    ood_tensors, mcfg.ood = fit_for_model(net, mcfg.prep, ds, train_positions, val_positions)
    mcfg = ModelConfig(**{**mcfg.to_dict(), "temperature": t,
                          "metrics": {**mcfg.metrics, **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "auc_macro", "ece")},
                                      "ece_uncalibrated": before}})
    save_model(net, mcfg, out / "best", extra=ood_tensors or None)
    (out / "val_metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    print(f"temperature {t:.3f}: val ECE {before:.4f} -> {metrics['ece']:.4f}; "
          f"val accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}, "
          f"macro AUC {metrics['auc_macro']:.4f} (TTA {'on' if tta else 'off'}, chosen on val)")
    return metrics


def copy_model(run_dir: str | Path, dest: str | Path, *, half: bool = True) -> Path:
    """Copy a run's best model (with its OOD tensors) to ``dest`` (no suffix), in fp16 by default."""
    from .models import load_model, save_model

    net, cfg, extra = load_model(Path(run_dir) / "best.safetensors", with_extra=True)
    return save_model(net, cfg, dest, half=half, extra=extra)
