"""What every reader returns: :class:`Dataset`, a metadata table (one row per image) and its pixels.

The readers (:mod:`skinlesion.data.ham10000` for HAM10000, DermaMNIST and caches,
:mod:`skinlesion.data.isic_layouts` for the ISIC downloads, :mod:`skinlesion.data.combine` for several
at once) all build one; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..classes import HAM10000, LabelSet
from ..errors import walk_files
from ..intake import IMAGE_SUFFIXES, load_rgb


@dataclass
class Dataset:
    """A dataset's metadata (one row per image) and access to its pixels."""

    root: Path
    layout: str  # "kaggle", "folder", "npz" or "cache"
    meta: pd.DataFrame  # image_id, lesion_id, dx, label, [split], [path | index], optional columns
    arrays: np.ndarray | None = None  # (N, H, W, 3) uint8 for npz / cache layouts
    warnings: list[str] = field(default_factory=list)
    label_set: LabelSet = HAM10000  # what ``label`` indexes (``dx`` holds its codes)

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def labels(self) -> np.ndarray:
        return self.meta["label"].to_numpy()

    def image(self, i: int) -> Image.Image:
        """Image ``i`` (row position in :attr:`meta`) as upright RGB."""
        row = self.meta.iloc[i]
        if self.arrays is not None:
            return Image.fromarray(self.arrays[int(row["index"])], "RGB")
        return load_rgb(row["path"])


def index_images(root: Path) -> dict[str, Path]:
    """Map image_id (file stem) to path for every image under ``root``, any depth.

    The Kaggle download holds each image twice (``HAM10000_images_part_1`` and its
    lower-case twin); the first in sorted order wins.
    """
    found: dict[str, Path] = {}
    for p in walk_files(root):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in found:
            found[p.stem] = p
    return found
