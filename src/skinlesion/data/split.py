"""Train/val/test splits and the split manifest (``image_id,lesion_id,dx,split``).

- ``lesion`` (default): grouped by ``lesion_id`` so that no lesion appears in two
  splits, and stratified by ``dx`` so that each class keeps its share in every split.
- ``image``: the reference project's image-level stratified split. It leaks: images
  of the same lesion land in train and test. The number of leaked test images is reported.
- ``official``: the DermaMNIST split, read from a ``split`` column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SkinLesionError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.70, 0.10, 0.20)
DEFAULT_SEED = 42
MANIFEST_COLUMNS = ["image_id", "lesion_id", "dx", "split"]


@dataclass
class SplitReport:
    manifest: pd.DataFrame
    kind: str
    leaked_test_images: int  # test images whose lesion also has an image in train
    shared_lesions: int  # lesions present in more than one split
    leaked_val_images: int = 0  # val images whose lesion also has an image in train

    def table(self) -> str:
        """A short plain-text summary table: images, lesions and class shares per split."""
        m = self.manifest
        codes = _codes(m)
        header = f"{'split':<6} {'images':>7} {'lesions':>8}  " + " ".join(f"{c:>6}" for c in codes)
        lines = [header, "-" * len(header)]
        for s in [s for s in SPLITS if s in set(m["split"])] + ["all"]:
            part = m if s == "all" else m[m["split"] == s]
            share = part["dx"].value_counts(normalize=True)
            lines.append(
                f"{s:<6} {len(part):>7} {part['lesion_id'].nunique():>8}  " + " ".join(f"{100 * share.get(c, 0.0):5.1f}%" for c in codes)
            )
        lines.append("")
        lines.append(f"lesions in more than one split: {self.shared_lesions}")
        lines.append(f"test images with a sibling image of the same lesion in train: {self.leaked_test_images}")
        lines.append(f"val images with a sibling image of the same lesion in train: {self.leaked_val_images}")
        if self.kind != "lesion" and (self.leaked_test_images or self.leaked_val_images):
            lines.append(
                "WARNING: this split leaks lesions between train and val/test; "
                "its scores are optimistic. Use the default lesion-grouped split."
            )
        worst = max_share_deviation(m)
        lines.append(f"largest class-share deviation from overall: {100 * worst:.2f} percentage points")
        return "\n".join(lines)


def leaked_images(manifest: pd.DataFrame, subset: str) -> int:
    """Images of ``subset`` whose lesion also has an image in train."""
    train_lesions = set(manifest.loc[manifest["split"] == "train", "lesion_id"])
    return int(manifest.loc[manifest["split"] == subset, "lesion_id"].isin(train_lesions).sum())


def shared_lesions(manifest: pd.DataFrame) -> int:
    """Lesions with images in more than one split."""
    return int((manifest.groupby("lesion_id")["split"].nunique() > 1).sum())


def max_share_deviation(manifest: pd.DataFrame) -> float:
    """Largest |class share in a split - overall class share|, as a fraction."""
    overall = manifest["dx"].value_counts(normalize=True)
    worst = 0.0
    for _, part in manifest.groupby("split"):
        share = part["dx"].value_counts(normalize=True)
        for c in overall.index:
            worst = max(worst, abs(share.get(c, 0.0) - overall[c]))
    return worst


def _check_fractions(fractions) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1.0) > 1e-6 or f[0] == 0:
        raise SkinLesionError(
            f"Split fractions {fractions} must be three non-negative numbers (train, val, test) "
            "that add up to 1, with a non-zero train fraction."
        )
    return f  # type: ignore[return-value]


def lesion_split(meta: pd.DataFrame, fractions=DEFAULT_FRACTIONS, seed: int = DEFAULT_SEED) -> pd.Series:
    """Assign whole lesions to splits, class by class, so each split gets its share of images.

    Within each diagnosis, lesions are shuffled (``seed``), then placed largest first
    into the split that is furthest below its target number of images. This keeps
    every class within a fraction of a percentage point of its overall share in
    each split while never separating the images of one lesion.
    """
    f = _check_fractions(fractions)
    lesion_dx = meta.groupby("lesion_id")["dx"].agg(lambda s: s.value_counts().index[0])
    sizes = meta.groupby("lesion_id").size()
    rng = np.random.default_rng(seed)
    assign: dict[str, str] = {}
    for code in _codes(meta):
        lesions = lesion_dx.index[lesion_dx == code].to_numpy()
        if len(lesions) == 0:
            continue
        lesions = lesions[rng.permutation(len(lesions))]
        counts = sizes.loc[lesions].to_numpy()
        order = np.argsort(-counts, kind="stable")
        total = counts.sum()
        target = np.array(f) * total
        have = np.zeros(3)
        for k in order:
            # the split with the largest relative deficit; empty-target splits never receive
            deficit = np.where(target > 0, (target - have) / np.maximum(target, 1e-9), -np.inf)
            j = int(np.argmax(deficit))
            assign[lesions[k]] = SPLITS[j]
            have[j] += counts[k]
    return meta["lesion_id"].map(assign)


def image_split(meta: pd.DataFrame, fractions=DEFAULT_FRACTIONS, seed: int = DEFAULT_SEED) -> pd.Series:
    """The reference project's image-level stratified split (leaks lesions; see module doc)."""
    from sklearn.model_selection import train_test_split

    f = _check_fractions(fractions)
    idx = np.arange(len(meta))
    y = meta["dx"].to_numpy()
    out = np.empty(len(meta), dtype=object)
    rest, test = (idx, np.array([], int)) if f[2] == 0 else train_test_split(idx, test_size=f[2], stratify=y, random_state=seed)
    if f[1] == 0:
        train, val = rest, np.array([], int)
    else:
        train, val = train_test_split(rest, test_size=f[1] / (f[0] + f[1]), stratify=y[rest], random_state=seed)
    out[train], out[val], out[test] = "train", "val", "test"
    return pd.Series(out, index=meta.index)


def official_split(meta: pd.DataFrame) -> pd.Series:
    if "split" not in meta.columns or meta["split"].isna().all():
        raise SkinLesionError(
            "This dataset has no official split: --kind official needs a 'split' column in the "
            "metadata, a dermamnist_split.csv beside it, or a DermaMNIST .npz file."
        )
    split = meta["split"].astype(str).str.strip().str.lower()
    bad = ~split.isin(SPLITS)
    if bad.any():
        raise SkinLesionError(
            f"{int(bad.sum())} image(s) have no official split or an unknown one "
            f"(first: {', '.join(meta.loc[bad, 'image_id'].head(5))}); the values must be train, val or test."
        )
    return split


def make_split(
    meta: pd.DataFrame, kind: str = "lesion", fractions=DEFAULT_FRACTIONS, seed: int = DEFAULT_SEED, groups: pd.Series | None = None
) -> SplitReport:
    """Split a dataset's metadata and report leakage; ``kind`` is lesion, image or official.

    ``groups`` (lesion split only): what must stay together instead of the lesion id, e.g. lesions
    joined by near-duplicate images (:func:`skinlesion.data.audit.near_duplicate_groups`).
    """
    if groups is not None and kind not in ("lesion", "grouped"):
        raise SkinLesionError("--dedup keeps near-duplicates together in a lesion split; use it with --kind lesion.")
    if kind in ("lesion", "grouped"):
        split = lesion_split(meta if groups is None else meta.assign(lesion_id=groups.to_numpy()), fractions, seed)
        kind = "lesion"
    elif kind == "image":
        split = image_split(meta, fractions, seed)
    elif kind == "official":
        split = official_split(meta)
    else:
        raise SkinLesionError(f"Unknown split kind {kind!r}; use lesion, image or official.")
    manifest = pd.DataFrame(
        {
            "image_id": meta["image_id"].to_numpy(),
            "lesion_id": meta["lesion_id"].to_numpy(),
            "dx": meta["dx"].to_numpy(),
            "split": split.to_numpy(),
        }
    )
    return SplitReport(
        manifest=manifest,
        kind=kind,
        leaked_test_images=leaked_images(manifest, "test"),
        shared_lesions=shared_lesions(manifest),
        leaked_val_images=leaked_images(manifest, "val"),
    )


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a split manifest written by ``skinlesion split`` and check its shape."""
    p = Path(path)
    if not p.exists():
        raise SkinLesionError(f"Split manifest {p} does not exist; make one with `skinlesion split DATA --out {p}`.")
    from .csvfile import read_csv

    m = read_csv(
        p,
        f"a split manifest written by `skinlesion split DATA --out {p.name}` (make one that way)",
        dtype={"image_id": str, "lesion_id": str},
    )
    missing = [c for c in ("image_id", "split") if c not in m.columns]
    if missing:
        raise SkinLesionError(
            f"Split manifest {p.name} lacks column(s) {', '.join(missing)}; it must have "
            f"{','.join(MANIFEST_COLUMNS)} as written by `skinlesion split`."
        )
    m["split"] = m["split"].astype(str).str.strip().str.lower()
    bad = ~m["split"].isin(SPLITS)
    if bad.any():
        raise SkinLesionError(f"Split manifest {p.name} has {int(bad.sum())} row(s) whose split is not train, val or test.")
    if m["image_id"].duplicated().any():
        raise SkinLesionError(f"Split manifest {p.name} lists some image_id more than once; each image belongs to one split.")
    return m


def cv_folds(meta: pd.DataFrame, k: int = 5, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Fold number (0..k-1) of every row: lesion-grouped and class-stratified (no lesion in two folds).

    scikit-learn's ``StratifiedGroupKFold`` on the diagnosis, grouped by ``lesion_id``.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 2 <= k <= 20:
        raise SkinLesionError(f"--folds {k} is out of range; use 2 to 20 (5 is usual).")
    n_lesions = meta["lesion_id"].nunique()
    if n_lesions < k:
        raise SkinLesionError(f"{k} folds need at least {k} lesions; this dataset has {n_lesions}.")
    folds = np.full(len(meta), -1, int)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(splitter.split(np.zeros(len(meta)), meta["dx"].to_numpy(), meta["lesion_id"].to_numpy())):
        folds[held] = f
    return folds


def fold_manifest(meta: pd.DataFrame, folds: np.ndarray, fold: int) -> pd.DataFrame:
    """The split manifest of one cross-validation member: its fold is ``val``, the rest ``train``."""
    return pd.DataFrame(
        {
            "image_id": meta["image_id"].to_numpy(),
            "lesion_id": meta["lesion_id"].to_numpy(),
            "dx": meta["dx"].to_numpy(),
            "split": np.where(np.asarray(folds) == fold, "val", "train"),
            "fold": np.asarray(folds),
        }
    )


def _codes(meta) -> list[str]:
    """The diagnosis codes of a table in label order (HAM10000's DermaMNIST order for HAM10000 data)."""
    if "label" in meta.columns:
        return list(meta.sort_values("label", kind="stable")["dx"].drop_duplicates())
    from ..classes import HAM10000

    known = [c for c in HAM10000.codes if c in set(meta["dx"])]
    return known + sorted(set(meta["dx"]) - set(known))
