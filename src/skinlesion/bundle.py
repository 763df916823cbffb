"""The model bundle: the one owner of a model on disk (nothing else writes its JSON).

A model is two files side by side, written together and atomically by :func:`save_bundle`:

``NAME.safetensors``
    Every tensor: member ``i``'s weights under ``members.{i}.``; the out-of-distribution
    score under ``ood.*``; the metadata fusion under ``meta.*``; the conformal calibration
    scores under ``conformal.*``; the photo-quality check under ``quality.*``. Loading it never
    unpickles anything.
``NAME.json``
    The :class:`ModelConfig`, validated on load (:func:`validate`): a wrong field is refused
    in one sentence naming it. Format version 2::

        {"format_version": 2, "name": ...,
         "label_set": "ham10000" | "isic2019" | "melanoma" | "custom",   # a known set lists its own codes in order
         "classes": [its codes, e.g. HAM10000's seven in the DermaMNIST order],
         "preprocess": {...Preprocess...},          # the ONE preprocessing (skinlesion.preprocess)
         "members": [{"backbone", "pretrained", "fold", "seed", "metrics"}, ...],
         "combine": "mean-probability",             # how members (and TTA views) are averaged
         "temperature": T > 0, "class_bias": [7] | null,   # calibration: softmax(z / T + b)
         "tta": bool, "low_res": "upsample" | "none",
         "ood": {...} | null, "metadata": {...} | null,     # tabular inputs: age, sex, site
         "refer": {...} | null, "conformal": {...} | null, "tier": {...} | null,
         "decision": {"default": rule, "rules": {"most-probable": {...}, "balanced": {"weights": [7], ...}}} | null,
         "quality": {"problems": {name: {"threshold", ...}}, ...} | null,   # photo quality (skinlesion.quality)
         "metrics": {...}, "train": {...},
         "created_with": {"skinlesion", "torch", "timm", "python"}}

   Format 1 files (one backbone, unprefixed weights) are read and upgraded in memory.

:func:`load_model` returns one ``torch.nn.Module`` whatever the number of members
(:class:`Ensemble`: the log of the members' mean probability), so evaluation, export and
prediction treat a single model and an ensemble alike. :func:`onnx_is_current` alone decides
whether an exported ``.onnx`` still matches the bundle it was made from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .classes import CODES
from .errors import SkinLesionError, missing
from .models import PICKLE_SUFFIXES, create_model
from .preprocess import Preprocess

FORMAT_VERSION = 2
MEMBER_PREFIX = "members."
ONNX_HASH_KEY = "skinlesion_bundle_sha256"


@dataclass
class Member:
    """One network of the bundle."""

    backbone: str
    pretrained: str = "none"  # where its initial weights came from
    fold: int | None = None  # the cross-validation fold it never saw (None: not cross-validated)
    seed: int | None = None
    metrics: dict = field(default_factory=dict)  # on its own validation data, at selection


@dataclass
class ModelConfig:
    """The validated JSON half of a bundle (see the module docstring for the layout)."""

    preprocess: dict
    members: list[Member]
    name: str = "skinlesion model"
    label_set: str | None = None  # the name of its label set (skinlesion.classes.LABEL_SETS, or "custom")
    classes: list[str] = field(default_factory=lambda: list(CODES))
    combine: str = "mean-probability"
    temperature: float = 1.0
    class_bias: list[float] | None = None
    tta: bool = False
    low_res: str = "upsample"
    ood: dict | None = None
    metadata: dict | None = None
    refer: dict | None = None
    conformal: dict | None = None
    tier: dict | None = None
    decision: dict | None = None  # the decision rules (skinlesion.posthoc): which class is named first
    quality: dict | None = None  # the photo-quality check (skinlesion.quality): problems and their thresholds
    metrics: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    created_with: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def prep(self) -> Preprocess:
        return Preprocess.from_dict(self.preprocess)

    @property
    def labels(self):
        """The model's :class:`~skinlesion.classes.LabelSet`."""
        from .classes import LABEL_SETS, LabelSet

        known = LABEL_SETS.get(self.label_set or "ham10000")
        return known if known is not None and known.codes == tuple(self.classes) else LabelSet("custom", tuple(self.classes))

    @property
    def rule(self) -> str:
        """The decision rule the model names its top class by, unless told otherwise."""
        return (self.decision or {}).get("default", "most-probable")

    @property
    def backbone(self) -> str:
        """The backbone, or ``"a+b"`` for an ensemble of several."""
        names = list(dict.fromkeys(m.backbone for m in self.members))
        return "+".join(names)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in ("format_version", "name", *[f for f in self.__dataclass_fields__ if f not in ("format_version", "name")])}


def library_versions() -> dict:
    """The versions a bundle is made with (as MONAI's metadata.json records them)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("skinlesion", "torch", "timm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# ---- validation -------------------------------------------------------------------------


def _bad(name: str, fld: str, problem: str) -> SkinLesionError:
    return SkinLesionError(
        f"The model config {name} is invalid: {fld} {problem}; use a config written by skinlesion train, or fix that field."
    )


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _upgrade_v1(d: dict) -> dict:
    d = dict(d)
    d["members"] = [{"backbone": d.pop("backbone", None), "pretrained": d.pop("pretrained", "none")}]
    if isinstance(d.get("ood"), dict) and "stages" in d["ood"]:
        d["ood"] = {**d["ood"], "stages": [f"{MEMBER_PREFIX}0.{s}" for s in d["ood"]["stages"]]}
    d["format_version"] = FORMAT_VERSION
    d["_v1"] = True
    return d


def validate(d, name: str = "model.json", *, check_backbones: bool = True) -> ModelConfig:
    """A :class:`ModelConfig` from parsed JSON, or one sentence naming the wrong field."""
    if not isinstance(d, dict):
        raise _bad(name, "the file", f"must hold a JSON object, not a {type(d).__name__}")
    version = d.get("format_version", 1)
    if version not in (1, FORMAT_VERSION):
        raise _bad(name, "format_version", f"is {version!r}; this skinlesion reads versions 1 and {FORMAT_VERSION} (upgrade skinlesion)")
    if version == 1:
        d = _upgrade_v1(d)
    d = {k: v for k, v in d.items() if k != "extra"}
    classes = d.get("classes", list(CODES))
    from .classes import LABEL_SETS, REGISTRY

    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or len(set(map(str, classes))) != len(classes)
        or any(str(c) not in REGISTRY for c in classes)
    ):
        raise _bad(name, "classes", f"is {classes!r}; it must list two or more distinct diagnosis codes of {', '.join(REGISTRY)}")
    set_name = d.get("label_set") or "ham10000"  # bundles from before label sets predict HAM10000's seven
    if set_name != "custom":
        if set_name not in LABEL_SETS:
            raise _bad(name, "label_set", f"is {set_name!r}; use one of {', '.join(LABEL_SETS)} or custom")
        if list(classes) != list(LABEL_SETS[set_name].codes):
            raise _bad(name, "classes", f"is {classes}; the {set_name} label set predicts {list(LABEL_SETS[set_name].codes)} in that order")
    k = len(classes)
    prep = d.get("preprocess")
    if not isinstance(prep, dict) or not prep:
        raise _bad(name, "preprocess", "is missing (a model must say how its images are preprocessed)")
    size = prep.get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise _bad(name, "preprocess.input_size", f"must be a positive whole number (got {size!r})")
    src = prep.get("source_size")
    if src is not None and (not isinstance(src, int) or src <= 0):
        raise _bad(name, "preprocess.source_size", f"must be a positive whole number or null (got {src!r})")
    if prep.get("crop", "none") not in ("center", "none"):
        raise _bad(name, "preprocess.crop", f"must be center or none (got {prep.get('crop')!r})")
    for key in ("mean", "std"):
        v = prep.get(key, [0.5, 0.5, 0.5])
        if not isinstance(v, list) or len(v) != 3 or not all(_finite(x) for x in v) or (key == "std" and min(v) <= 0):
            raise _bad(name, f"preprocess.{key}", f"must be three {'positive ' if key == 'std' else ''}numbers (got {v!r})")
    t = d.get("temperature", 1.0)
    if not _finite(t) or t <= 0:
        raise _bad(name, "temperature", f"must be a positive number (got {t!r})")
    bias = d.get("class_bias")
    if bias is not None and (not isinstance(bias, list) or len(bias) != k or not all(_finite(x) for x in bias)):
        raise _bad(name, "class_bias", f"must be {k} numbers (one per class) or null")
    members = d.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise _bad(name, "members", "must be a non-empty list of networks")
    known = set(Member.__dataclass_fields__)
    for i, m in enumerate(members):
        if not isinstance(m.get("backbone"), str) or not m["backbone"]:
            raise _bad(name, f"members[{i}].backbone", "is missing")
    if check_backbones:
        import timm

        for i, m in enumerate(members):
            if not timm.is_model(m["backbone"]):
                raise _bad(name, f"members[{i}].backbone", f"{m['backbone']!r} is not a timm model name")
    if not isinstance(d.get("tta", False), bool):
        raise _bad(name, "tta", "must be true or false")
    ood = d.get("ood")
    if ood is not None and (not isinstance(ood, dict) or not _finite(ood.get("threshold")) or ood["threshold"] <= 0):
        raise _bad(name, "ood.threshold", "must be a positive number")
    if ood is not None and ood.get("aggregate", "max") not in ("mean", "max"):  # skinlesion.ood.AGGREGATES
        raise _bad(name, "ood.aggregate", "must be 'mean' or 'max'")
    for opt in ("metadata", "refer", "conformal", "tier", "decision", "quality", "metrics", "train", "created_with"):
        if d.get(opt) is not None and not isinstance(d[opt], dict):
            raise _bad(name, opt, "must be an object or null")
    _check_decision(d.get("decision"), name, k)
    fields = set(ModelConfig.__dataclass_fields__)
    cfg = ModelConfig(
        **{k: v for k, v in d.items() if k in fields and k != "members"},
        members=[Member(**{k: v for k, v in m.items() if k in known}) for m in members],
    )
    cfg.preprocess = Preprocess.from_dict(prep).to_dict()
    return cfg


def _check_decision(dec, name: str, k: int) -> None:
    """The decision block: a default among its rules; a weighted rule has one positive weight per class."""
    if dec is None:
        return
    rules = dec.get("rules")
    if not isinstance(rules, dict) or "most-probable" not in rules:
        raise _bad(name, "decision.rules", "must be an object holding at least most-probable")
    if dec.get("default", "most-probable") not in rules:
        raise _bad(name, "decision.default", f"is {dec.get('default')!r}, which is not one of its rules ({', '.join(rules)})")
    for rule, spec in rules.items():
        if rule == "most-probable":
            continue
        w = spec.get("weights") if isinstance(spec, dict) else None
        if not isinstance(w, list) or len(w) != k or not all(_finite(x) and x > 0 for x in w):
            raise _bad(name, f"decision.rules.{rule}.weights", f"must be {k} positive numbers")


# ---- paths -------------------------------------------------------------------------------


def default_model_path() -> Path:
    """The model shipped inside the package."""
    from importlib import resources

    return Path(str(resources.files("skinlesion") / "weights" / "default.safetensors"))


def user_cache_dir() -> Path:
    """Where derived files (the default model's ONNX export) are kept: $SKINLESION_CACHE or ~/.cache/skinlesion."""
    return Path(os.environ.get("SKINLESION_CACHE", Path.home() / ".cache" / "skinlesion"))


def default_onnx_path() -> Path:
    """Where the default model's ONNX export lives when the package folder is not writable."""
    return user_cache_dir() / "default.onnx"


def resolve_model_path(model: str | Path) -> Path:
    """A run directory, a .safetensors/.json/.onnx file, or ``default`` -> the bundle's .safetensors path."""
    if str(model).startswith("hf://"):  # a Hugging Face Hub model: downloaded (cached) by huggingface_hub
        from .hub import download

        return download(str(model))
    if str(model) == "default":
        p = default_model_path()
        if not p.exists():
            raise SkinLesionError("The shipped default model is missing from this installation; reinstall skinlesion.")
        return p
    p = Path(model).expanduser()
    if not p.exists():
        raise SkinLesionError(f"Model {missing(p)}; pass a run directory, a .safetensors model file or 'default'.")
    if p.is_dir():
        for name in ("model.safetensors", "best.safetensors", "last.safetensors"):
            if (p / name).exists():
                return p / name
        found = sorted(p.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise SkinLesionError(f"No model (model.safetensors or best.safetensors) in {p}; pass a finished run directory or a model file.")
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise SkinLesionError(
            f"{p.name} is a pickle checkpoint, which can run arbitrary code when loaded, so it is refused; "
            "pass a .safetensors model with its .json config (as written by skinlesion train)."
        )
    if suffix in (".json", ".onnx"):
        w = p.with_suffix(".safetensors")
        if not w.exists():
            raise SkinLesionError(f"The weights {w.name} that belong to {p.name} are missing; keep the bundle's files together.")
        return w
    if suffix != ".safetensors":
        raise SkinLesionError(f"{p.name} is not a model file; pass a .safetensors model (with its .json config) or a run directory.")
    return p


# ---- reading -----------------------------------------------------------------------------


def config_path(weights_path: str | Path) -> Path:
    """The JSON half of a bundle: ``NAME.json`` beside the weights, or a Hub folder's ``config.json``."""
    from .hub import is_hub_folder

    p = Path(weights_path)
    return p.parent / "config.json" if p.name == "model.safetensors" and is_hub_folder(p) else p.with_suffix(".json")


def load_config(weights_path: str | Path, *, check_backbones: bool = True) -> ModelConfig:
    """The validated config beside ``weights_path``."""
    cfg_path = config_path(weights_path)
    if cfg_path.name == "config.json":  # a Hugging Face Hub folder (skinlesion.hub): the bundle's config inside timm's
        from .hub import hub_config

        return validate(hub_config(cfg_path), cfg_path.name, check_backbones=check_backbones)
    if not cfg_path.exists():
        raise SkinLesionError(
            f"The config {cfg_path.name} is missing beside {Path(weights_path).name}; a model needs both files "
            "(weights .safetensors and config .json) as written by skinlesion train."
        )
    try:
        d = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SkinLesionError(f"The config {cfg_path.name} is not valid JSON ({exc}); use the file skinlesion train wrote.") from None
    return validate(d, cfg_path.name, check_backbones=check_backbones)


def read_tensors(weights_path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a bundle as float32/int numpy arrays (format 1 weights get their member prefix)."""
    from safetensors.numpy import load_file

    path = Path(weights_path)
    try:
        raw = load_file(str(path))
    except Exception as exc:
        raise SkinLesionError(f"{path.name} is not a readable safetensors file ({exc}); use the file skinlesion train wrote.") from None
    out = {}
    aux = ("ood.", "meta.", "conformal.", "oof.", "quality.")
    v1 = not any(k.startswith(MEMBER_PREFIX) for k in raw)
    for k, v in raw.items():
        key = f"{MEMBER_PREFIX}0.{k}" if v1 and not k.startswith(aux) else k
        out[key] = v.astype(np.float32) if v.dtype == np.float16 else v
    return out


def aux_tensors(tensors: dict) -> dict[str, np.ndarray]:
    """The non-network tensors (OOD, metadata fusion, conformal scores)."""
    return {k: v for k, v in tensors.items() if not k.startswith(MEMBER_PREFIX)}


def _ensemble_class():
    import torch

    class Ensemble(torch.nn.Module):
        """Members side by side; one member returns its logits unchanged, several the log of their mean probability."""

        def __init__(self, members):
            super().__init__()
            self.members = torch.nn.ModuleList(members)

        def forward(self, x):
            if len(self.members) == 1:
                return self.members[0](x)
            logp = torch.stack([torch.log_softmax(m(x).float(), -1) for m in self.members])
            return torch.logsumexp(logp, 0) - math.log(len(self.members))

    return Ensemble


def ensemble(members):
    """Wrap networks as one module (see :func:`load_model`)."""
    return _ensemble_class()(members)


def load_model(model: str | Path, *, with_extra: bool = False):
    """Load a bundle: (torch module in eval mode, ModelConfig[, auxiliary arrays such as ood.*])."""
    import torch

    path = resolve_model_path(model)
    cfg = load_config(path)
    tensors = read_tensors(path)
    nets = []
    for i, m in enumerate(cfg.members):
        net = create_model(m.backbone, len(cfg.classes), drop_rate=0.0)
        prefix = f"{MEMBER_PREFIX}{i}."
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        own = net.state_dict()
        wrong = [k for k, v in sd.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in sd if k not in own]
        if wrong or missing or unexpected:
            detail = (
                f"shape of {wrong[0]} is {tuple(sd[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
                if wrong
                else f"{len(missing)} missing and {len(unexpected)} unexpected tensors"
            )
            raise SkinLesionError(
                f"The weights of member {i} in {path.name} do not fit the {m.backbone} backbone named in its config "
                f"({detail}); the two files must come from the same training run."
            )
        net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False)
        nets.append(net)
    net = ensemble(nets).eval()
    return (net, cfg, aux_tensors(tensors)) if with_extra else (net, cfg)


# ---- writing (the only writer of a bundle) ------------------------------------------------


def _atomic_write(path: Path, write) -> None:
    from .errors import atomic_write

    atomic_write(path, write, what="model path")


def save_bundle(nets, config: ModelConfig, path: str | Path, *, half: bool = False, extra: dict | None = None) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (``path`` without suffix); returns the .safetensors path.

    ``nets``: one network, a list of them, or an :class:`Ensemble`; ``extra``: auxiliary arrays
    (``ood.*``, ``meta.*``, ``conformal.*``). Records the library versions in the config.
    """
    import torch
    from safetensors.torch import save as to_bytes

    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(nets, "members") and isinstance(nets.members, torch.nn.ModuleList):
        nets = list(nets.members)
    elif not isinstance(nets, (list, tuple)):
        nets = [nets]
    if len(nets) != len(config.members):
        raise ValueError(f"{len(nets)} networks for {len(config.members)} members")
    sd = {}
    for i, net in enumerate(nets):
        for k, v in net.state_dict().items():
            if k.endswith("num_batches_tracked"):
                continue
            v = v.detach().cpu()
            sd[f"{MEMBER_PREFIX}{i}.{k}"] = (v.half() if half and v.is_floating_point() else v).contiguous()
    for k, v in (extra or {}).items():
        if k.startswith(MEMBER_PREFIX):
            raise ValueError(f"auxiliary tensor {k} uses the members' prefix")
        sd[k] = torch.as_tensor(np.asarray(v)).contiguous()
    config.created_with = library_versions()
    d = validate(_strict(config.to_dict()), path.name + ".json", check_backbones=False).to_dict()
    weights = path.with_suffix(".safetensors")
    # serialised in memory, written by Python: a full disk is an OSError (one sentence), never a SafetensorError
    blob = to_bytes(sd, metadata={"format": "pt", "skinlesion_format": str(FORMAT_VERSION)})
    _atomic_write(weights, lambda t: t.write_bytes(blob))
    _atomic_write(path.with_suffix(".json"), lambda t: t.write_text(json.dumps(_strict(d), indent=2, allow_nan=False) + "\n"))
    return weights


def _strict(d: dict) -> dict:
    """``d`` as plain JSON data, every non-finite number (an undefined metric: NaN) as null, so the config
    is strict JSON that any reader (a browser, jq, the REST API) parses."""
    import math

    def fix(v):
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return fix(json.loads(json.dumps(d, default=float)))


def update_config(weights_path: str | Path, **changes) -> ModelConfig:
    """Rewrite a bundle's config with ``changes`` (its tensors untouched), atomically."""
    path = Path(weights_path)
    cfg = load_config(path, check_backbones=False)
    for k, v in changes.items():
        if k not in ModelConfig.__dataclass_fields__:
            raise ValueError(f"unknown config field {k}")
        setattr(cfg, k, v)
    d = validate(_strict(cfg.to_dict()), path.with_suffix(".json").name, check_backbones=False).to_dict()
    _atomic_write(path.with_suffix(".json"), lambda t: t.write_text(json.dumps(_strict(d), indent=2, allow_nan=False) + "\n"))
    return cfg


def copy_bundle(src: str | Path, dest: str | Path, *, half: bool = True) -> Path:
    """Copy a bundle (all members and auxiliary tensors) to ``dest``, in fp16 by default."""
    net, cfg, extra = load_model(src, with_extra=True)
    return save_bundle(net, cfg, dest, half=half, extra=extra)


# ---- derived files --------------------------------------------------------------------


def bundle_hash(weights_path: str | Path) -> str:
    """SHA-256 of the bundle's two files: what an ONNX export records and is checked against."""
    path = Path(weights_path)
    h = hashlib.sha256()
    for p in (path.with_suffix(".safetensors"), config_path(path)):
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def onnx_hash(onnx_path: str | Path) -> str | None:
    """The bundle hash an exported .onnx file records (None when it records none or is unreadable).

    Read from the file's top-level protobuf fields without the ``onnx`` package: ModelProto's
    ``metadata_props`` (field 14, key 1 / value 2) follow the graph (field 7), which is skipped by its
    length, not parsed. Importing onnx and parsing a 68 MB model was most of what the app's first
    page waited for (benchmarks/RESULTS.md, "Web app cold start").
    """
    try:
        with open(onnx_path, "rb") as f:
            for field, value in _proto_fields(f, Path(onnx_path).stat().st_size):
                if field == 14 and isinstance(value, bytes):
                    entry = dict(_proto_fields_of(value))
                    if entry.get(1) == ONNX_HASH_KEY.encode():
                        return entry.get(2, b"").decode("utf-8")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


_SMALL_FIELDS = (14,)  # the only length-delimited top-level fields read into memory; the rest are skipped


def _varint(read) -> int:
    shift = out = 0
    while True:
        b = read(1)
        if not b:
            raise ValueError("truncated varint")
        out |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return out
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _proto_fields(f, size: int):
    """(field number, value) of a protobuf message in file ``f``: varints as int, length-delimited fields as bytes
    where the field is in _SMALL_FIELDS (else None, seeked over); fixed 32/64-bit fields skipped."""
    while f.tell() < size:
        key = _varint(f.read)
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, _varint(f.read)
        elif wire == 2:
            n = _varint(f.read)
            if f.tell() + n > size:
                raise ValueError("field runs past the end of the file")
            if field in _SMALL_FIELDS:
                yield field, f.read(n)
            else:
                f.seek(n, 1)
                yield field, None
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, 1)
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


def _proto_fields_of(data: bytes):
    """(field number, value) of a small in-memory message (a StringStringEntryProto): strings as bytes."""
    import io

    f = io.BytesIO(data)
    while f.tell() < len(data):
        key = _varint(f.read)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n = _varint(f.read)
            yield field, f.read(n)
        elif wire == 0:
            yield field, _varint(f.read)
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


def onnx_is_current(onnx_path: str | Path, weights_path: str | Path) -> bool:
    """True when ``onnx_path`` exists and was exported from exactly this bundle."""
    onnx_path = Path(onnx_path)
    return onnx_path.exists() and onnx_hash(onnx_path) == bundle_hash(weights_path)


def onnx_for(model: str | Path) -> Path | None:
    """The current ONNX export of ``model``: beside it, or for ``default`` in the user cache; None if none."""
    weights = resolve_model_path(model)
    candidates = [weights.with_suffix(".onnx")]
    if str(model) == "default":
        candidates.append(default_onnx_path())
    return next((p for p in candidates if onnx_is_current(p, weights)), None)
