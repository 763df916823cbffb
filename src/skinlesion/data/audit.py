"""Leakage audit of a split, and near-duplicate groups for splitting.

Two ways a test image can leak into training:

- **shared lesions**: another image of the same ``lesion_id`` sits in another split (the image-level
  split's flaw; DermaMNIST's official val has 348 such images);
- **near-duplicates**: the same picture under another lesion id (HAM10000 holds such "missed
  duplicates"; Abhishek, Jain & Hamarneh, Sci Data 2025), found by perceptual hash (``imagehash``'s
  pHash, 64 bits) within ``max_distance`` bits. A re-encoded, resized copy hashes at distance 0-2;
  on the 8,010 real 28 px DermaMNIST images, photos of one lesion are that close only 1.6 % of the time.

:func:`audit` reports both per pair of splits; :func:`near_duplicate_groups` merges lesions joined by
near-duplicates, which ``split --dedup`` then keeps together.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from .split import SPLITS, leaked_images

DEFAULT_MAX_DISTANCE = 2
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def image_hashes(ds, positions=None, progress=None) -> np.ndarray:
    """64-bit perceptual hashes (uint64) of the dataset's images."""
    import imagehash

    positions = np.arange(len(ds)) if positions is None else np.asarray(positions)
    out = np.empty(len(positions), np.uint64)
    for k, i in enumerate(positions):
        out[k] = int(str(imagehash.phash(ds.image(int(i)))), 16)
        if progress is not None and (k + 1) % 500 == 0:
            progress(k + 1, len(positions))
    return out


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> np.ndarray:
    """All pairs (i, j, bits) with i < j whose hashes differ in at most ``max_distance`` bits."""
    hashes = np.ascontiguousarray(hashes, np.uint64)
    found = []
    for start in range(0, len(hashes), 512):
        block = hashes[start : start + 512]
        x = np.bitwise_xor(block[:, None], hashes[None, :])
        d = _POPCOUNT[x.view(np.uint8)].reshape(len(block), len(hashes), 8).sum(-1)
        i, j = np.nonzero(d <= max_distance)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep], d[i[keep] - start, j[keep]].astype(np.int64)], 1).astype(np.int64))
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def near_duplicate_groups(meta: pd.DataFrame, pairs: np.ndarray) -> tuple[pd.Series, int]:
    """Group ids: lesions joined by any near-duplicate pair merged into one (union-find).

    Returns (group per image, number of images whose group now holds another lesion too).
    """
    lesions = meta["lesion_id"].astype(str).to_numpy()
    parent = {lesion: lesion for lesion in set(lesions)}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j, _ in pairs:
        a, b = find(lesions[i]), find(lesions[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups = pd.Series([find(x) for x in lesions], index=meta.index)
    lesions_per_group = pd.Series(lesions).groupby(groups.to_numpy()).nunique()
    merged = set(lesions_per_group.index[lesions_per_group > 1])
    regrouped = int(np.isin(groups.to_numpy(), list(merged)).sum())
    return groups, regrouped


@dataclass
class AuditReport:
    """What a split shares between its parts. ``pairs``: one row per image pair (kind lesion or near-duplicate)."""

    pairs: pd.DataFrame
    leaked_test_images: int  # test images with a sibling of their lesion in train (as `split` reports)
    near_test_images: int  # test images with a near-duplicate in train (another lesion id)
    images_checked: bool
    max_distance: int

    @property
    def leaks_into_test(self) -> bool:
        return bool(self.leaked_test_images or self.near_test_images)

    def table(self) -> str:
        lines = ["splits      shared lesions  images involved  near-duplicate pairs"]
        for a, b in combinations(SPLITS, 2):
            lp = self.pairs[(self.pairs["kind"] == "lesion") & (self.pairs["split_a"] == a) & (self.pairs["split_b"] == b)]
            npairs = self.pairs[
                (self.pairs["kind"] == "near-duplicate") & self.pairs["split_a"].isin([a, b]) & self.pairs["split_b"].isin([a, b])
            ]
            npairs = npairs[npairs["split_a"] != npairs["split_b"]]
            images = len(set(lp["image_a"]) | set(lp["image_b"]))
            near = str(len(npairs)) if self.images_checked else "not checked"
            lines.append(f"{a + '/' + b:<11} {lp['lesion_id_a'].nunique():>14}  {images:>15}  {near:>20}")
        lines.append(f"test images with a sibling image of the same lesion in train: {self.leaked_test_images}")
        if self.images_checked:
            lines.append(
                f"test images with a near-duplicate in train (pHash within {self.max_distance} bits, another lesion): {self.near_test_images}"
            )
        else:
            lines.append("near-duplicates: not checked (no images: pass the dataset folder rather than its metadata CSV)")
        return "\n".join(lines)


def audit(manifest: pd.DataFrame, hashes: np.ndarray | None = None, max_distance: int = DEFAULT_MAX_DISTANCE) -> AuditReport:
    """Audit a split manifest (image_id, lesion_id, split); ``hashes`` (one per manifest row) adds near-duplicates."""
    m = manifest.reset_index(drop=True)
    rows = []
    for a, b in combinations(SPLITS, 2):
        ma, mb = m[m["split"] == a], m[m["split"] == b]
        shared = set(ma["lesion_id"]) & set(mb["lesion_id"])
        if shared:
            left = ma[ma["lesion_id"].isin(shared)]
            right = mb[mb["lesion_id"].isin(shared)]
            for _, r in left.merge(right, on="lesion_id", suffixes=("_a", "_b")).iterrows():
                rows.append(("lesion", a, r["image_id_a"], r["lesion_id"], b, r["image_id_b"], r["lesion_id"], np.nan))
    near_test = 0
    if hashes is not None:
        pairs = near_duplicate_pairs(hashes, max_distance)
        split, image, lesion = m["split"].to_numpy(), m["image_id"].to_numpy(), m["lesion_id"].to_numpy()
        test_hit = set()
        for i, j, d in pairs:
            if lesion[i] == lesion[j] or split[i] == split[j]:
                continue  # same lesion: reported above (or within one split, harmless)
            if SPLITS.index(split[i]) > SPLITS.index(split[j]):
                i, j = j, i
            rows.append(("near-duplicate", split[i], image[i], lesion[i], split[j], image[j], lesion[j], int(d)))
            if split[i] == "train" and split[j] == "test":
                test_hit.add(image[j])
        near_test = len(test_hit)
    cols = ["kind", "split_a", "image_a", "lesion_id_a", "split_b", "image_b", "lesion_id_b", "distance"]
    return AuditReport(
        pairs=pd.DataFrame(rows, columns=cols),
        leaked_test_images=leaked_images(m, "test"),
        near_test_images=near_test,
        images_checked=hashes is not None,
        max_distance=max_distance,
    )
