"""A model bundle as a Hugging Face Hub folder, and ``hf://OWNER/NAME`` models.

The folder follows timm's ``save_for_hf`` layout, so ``huggingface_hub.upload_folder`` accepts it as it is:

- ``model.safetensors``: the bundle's tensors, unchanged (members, OOD, metadata fusion, conformal);
- ``config.json``: timm's fields (``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg``
  with the input size, mean, std and crop) and, under ``skinlesion``, the bundle's whole config
  (preprocessing, label set, rules, checks and metrics), so the folder loads as the bundle it came from;
- ``README.md``: the model card, with Hub YAML metadata (license, datasets, metrics, tags,
  ``pipeline_tag``) validated by ``huggingface_hub.ModelCard``.

``Predictor("hf://OWNER/NAME")`` downloads the folder through ``huggingface_hub.snapshot_download``
(cached in the Hub cache; offline, a cached copy is used, else one sentence says what to do).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import SkinLesionError

HUB_KEY = "skinlesion"  # the bundle's config inside config.json
PREFIX = "hf://"
LICENSE = "cc-by-nc-sa-4.0"  # HAM10000's (the images the shipped weights learned from)
DATASETS = ["marmal88/skin_cancer"]  # HAM10000 on the Hub
TAGS = ["image-classification", "timm", "skinlesion", "dermatology", "dermoscopy", "ham10000", "safetensors"]


def is_hub_folder(path: str | Path) -> bool:
    """True for a folder (or its model.safetensors) holding a Hub-format config.json written by :func:`export_hub`."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    cfg = folder / "config.json"
    if not (cfg.is_file() and (folder / "model.safetensors").is_file()) or (folder / "model.json").exists():
        return False
    try:
        return isinstance(json.loads(cfg.read_text()).get(HUB_KEY), dict)
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False


def hub_config(path: str | Path) -> dict:
    """The bundle config stored in a Hub folder's config.json."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    return json.loads((folder / "config.json").read_text())[HUB_KEY]


def timm_config(cfg) -> dict:
    """timm's config.json fields (``save_for_hf``) for a bundle config, plus the bundle's own under ``skinlesion``."""
    prep = cfg.prep
    size = int(prep.input_size)
    labels = list(cfg.labels.codes)
    return {
        "architecture": cfg.members[0].backbone,
        "num_classes": len(labels),
        "num_features": None,
        "global_pool": "avg",
        "label_names": labels,
        "label_descriptions": {c: d for c, d in zip(labels, _names(labels))},
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "mean": list(map(float, prep.mean)),
            "std": list(map(float, prep.std)),
            "crop_pct": 1.0,
            "crop_mode": prep.crop,
            "source_size": cfg.preprocess.get("source_size"),
            "interpolation": cfg.preprocess.get("interpolation", "bicubic"),
            "num_classes": len(labels),
            "license": LICENSE,
        },
        HUB_KEY: cfg.to_dict(),
    }


def _names(codes) -> list[str]:
    from . import classes

    out = []
    for c in codes:
        try:
            out.append(classes.get(c).name)
        except Exception:  # a custom label set's own code
            out.append(c)
    return out


def card_data(cfg):
    """The Hub YAML metadata (``huggingface_hub.ModelCardData``) of a bundle."""
    from huggingface_hub import ModelCardData

    m = cfg.metrics or {}
    results = [
        (k, m[k]) for k in ("accuracy", "balanced_accuracy", "malignant_auc", "auc_macro", "f1_macro") if isinstance(m.get(k), (int, float))
    ]
    metrics = [k.split("_")[-1] if k == "balanced_accuracy" else k for k, _ in results]
    kwargs = {}
    if results:
        from huggingface_hub import EvalResult

        kwargs["eval_results"] = [
            EvalResult(
                task_type="image-classification",
                dataset_type=DATASETS[0],
                dataset_name="HAM10000 (" + str(m.get("evaluated_on", "held-out")) + ")",
                metric_type=k,
                metric_value=float(v),
            )
            for k, v in results
        ]
        kwargs["model_name"] = cfg.name
    return ModelCardData(
        license=LICENSE,
        library_name="timm",
        pipeline_tag="image-classification",
        datasets=DATASETS,
        metrics=sorted(set(["accuracy", *metrics])),
        tags=TAGS,
        **kwargs,
    )


def readme(model: str | Path) -> str:
    """README.md of the Hub folder: the model card with validated Hub YAML metadata."""
    from .bundle import load_config, resolve_model_path
    from .card import render

    cfg = load_config(resolve_model_path(model), check_backbones=False)
    text = f"---\n{card_data(cfg).to_yaml()}\n---\n\n" + render(model)
    check_readme(text)
    return text


def check_readme(text: str) -> None:
    """The metadata checks made here (``ModelCard.validate`` is a call to the Hub's server): the YAML parses
    into ``ModelCardData`` and names the license, pipeline tag, datasets, metrics and tags."""
    from huggingface_hub import ModelCard

    card = ModelCard(text, ignore_metadata_errors=False)
    d = card.data.to_dict()
    missing = [k for k in ("license", "pipeline_tag", "datasets", "metrics", "tags") if not d.get(k)]
    if missing:
        raise SkinLesionError(f"The Hub model card lacks {', '.join(missing)}; this is a bug in skinlesion.hub.")


def export_hub(model: str | Path, out: str | Path) -> Path:
    """Write ``model`` as a Hub-format folder ``out`` (config.json, model.safetensors, README.md); returns ``out``.

    The folder is assembled beside ``out`` and renamed into place, so a kill leaves no half folder."""
    from .bundle import _strict, load_config, resolve_model_path

    src = resolve_model_path(model)
    cfg = load_config(src, check_backbones=False)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SkinLesionError(f"{out} exists and is not an empty folder; pass a new folder for the Hub export.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shutil.copyfile(src, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(_strict(timm_config(cfg)), indent=2, allow_nan=False) + "\n")
        (tmp / "README.md").write_text(readme(model))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def download(spec: str) -> Path:
    """``hf://OWNER/NAME[@REVISION]`` -> the local Hub folder, downloaded (and cached) by huggingface_hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = spec[len(PREFIX) :].strip("/")
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise SkinLesionError(f"{spec} is not a Hub model; write hf://OWNER/NAME (for example hf://me/skinlesion-ham10000).")
    try:
        folder = snapshot_download(repo, revision=revision or None, allow_patterns=["config.json", "model.safetensors", "README.md"])
    except RepositoryNotFoundError:
        raise SkinLesionError(f"The Hub has no model {repo} (or it is private); check the name, or log in with `hf auth login`.") from None
    except LocalEntryNotFoundError:
        raise SkinLesionError(
            f"Cannot download {repo} from the Hugging Face Hub (offline, and no copy in the Hub cache); connect once, or pass a local folder."
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise SkinLesionError(f"Downloading {repo} from the Hugging Face Hub failed ({exc}); retry, or pass a local folder.") from None
    if not is_hub_folder(folder):
        raise SkinLesionError(
            f"{repo} on the Hub is not a skinlesion model (its config.json has no {HUB_KEY!r} section); export one with skinlesion export --format hub."
        )
    return Path(folder) / "model.safetensors"
