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
