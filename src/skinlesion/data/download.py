"""Downloading HAM10000 (kagglehub) and DermaMNIST (medmnist).

Both fail fast offline, with a sentence saying how to get the data by hand.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from ..errors import SkinLesionError

KAGGLE_DATASET = "kmader/skin-cancer-mnist-ham10000"
KAGGLE_HOST = "www.kaggle.com"
MEDMNIST_HOST = "zenodo.org"

HAM_BY_HAND = (
    "download it by hand from https://www.kaggle.com/datasets/kmader/skin-cancer-mnist-ham10000 "
    "(or https://doi.org/10.7910/DVN/DBW86T) and unzip it into {to}"
)
DERMAMNIST_BY_HAND = "download dermamnist.npz by hand from https://zenodo.org/records/10519652 and put it in {to}"


def _reachable(host: str, timeout: float = 5.0) -> str | None:
    """None when ``host`` answers on port 443, else the reason it does not."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


def download_ham10000(to: str | Path) -> Path:
    to = Path(to)
    why = _reachable(KAGGLE_HOST)
    if why:
        raise SkinLesionError(f"Cannot reach {KAGGLE_HOST} ({why}), so HAM10000 cannot be downloaded; " + HAM_BY_HAND.format(to=to) + ".")
    try:
        import kagglehub

        cached = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as exc:
        raise SkinLesionError(
            f"The Kaggle download failed ({exc}); sign in with `kaggle` credentials "
            "(~/.kaggle/kaggle.json) or " + HAM_BY_HAND.format(to=to) + "."
        ) from None
    to.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cached, to, dirs_exist_ok=True)
    return to


def download_dermamnist(to: str | Path, size: int = 28) -> Path:
    to = Path(to)
    why = _reachable(MEDMNIST_HOST)
    if why:
        raise SkinLesionError(
            f"Cannot reach {MEDMNIST_HOST} ({why}), so DermaMNIST cannot be downloaded; " + DERMAMNIST_BY_HAND.format(to=to) + "."
        )
    to.mkdir(parents=True, exist_ok=True)
    try:
        import medmnist

        for split in ("train", "val", "test"):
            medmnist.DermaMNIST(split=split, download=True, root=str(to), size=size)
    except Exception as exc:
        raise SkinLesionError(f"The medmnist download failed ({exc}); " + DERMAMNIST_BY_HAND.format(to=to) + ".") from None
    return to
