"""Several datasets as one: ``skinlesion train DATA1 DATA2 ...`` (and ``split``, ``audit``, ``info``).

The datasets are read as usual (:func:`skinlesion.data.load_dataset`), then:

1. **One label set**: the first dataset's. The others' classes are mapped onto it
   (:func:`skinlesion.classes.default_mapping`: shared codes to themselves, ISIC 2019's ``ak`` and
   ``scc`` to HAM10000's ``akiec``; a ``from,to`` mapping file on top); images whose class has no
   counterpart are left out and counted.
2. **Each image once**: an image id already read from an earlier dataset is dropped (ISIC 2019
   holds HAM10000's 10,015 images under the same ids). Where the later dataset gives that image
   another class (after the mapping), the conflict is counted and named in the warning and the first
   dataset's label kept (``on_conflict="drop"``: the image is left out of both). The same dataset
   given twice is refused. An image whose perceptual hash
   is within ``max_distance`` bits of one in an earlier dataset (the leakage audit's pHash: the
   same picture under another id). Near-duplicates within one dataset are not dropped: they are
   its own business (``split --dedup`` keeps them in one split).
3. Lesion ids (the grouping key of splits and folds) are kept as they are: the same lesion in two
   datasets stays one lesion. A ``dataset`` column names each image's source dataset, and
   ``source`` does too where a dataset's metadata names none.

Every drop is counted in one warning, so what trains is said. Only datasets of image files combine
(folders and CSVs); a prepared cache or an ``.npz`` holds no file to compare, and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SkinLesionError

KEEP_COLUMNS = ("image_id", "lesion_id", "patient_id", "dx", "label", "age", "sex", "localization", "path", "source", "split")


@dataclass
class CombineReport:
    images: list[int] = field(default_factory=list)  # read per dataset
    unmapped: list[dict] = field(default_factory=list)  # per dataset: {code: images} left out
    same_id: list[int] = field(default_factory=list)  # per dataset: dropped, id seen in an earlier one
    near_duplicate: list[int] = field(default_factory=list)  # per dataset: dropped, a near-duplicate of an earlier one's
    conflicts: list[list] = field(default_factory=list)  # per dataset: (image id, earlier class, this class) of a same id
    on_conflict: str = "keep-first"

    def sentence(self, names) -> str:
        parts = []
        for k, name in enumerate(names):
            drops = []
            if self.same_id[k]:
                drops.append(f"{self.same_id[k]} already in an earlier dataset by id")
            if self.conflicts[k]:
                c = self.conflicts[k]
                shown = ", ".join(f"{i} {a} there, {b} here" for i, a, b in c[:3]) + (", ..." if len(c) > 3 else "")
                kept = "left out of both" if self.on_conflict == "drop" else "the earlier label kept"
                drops.append(f"{len(c)} of them with another diagnosis, a label conflict ({shown}; {kept})")
            if self.near_duplicate[k]:
                drops.append(f"{self.near_duplicate[k]} near-duplicates of an earlier dataset's images")
            if self.unmapped[k]:
                drops.append(f"{sum(self.unmapped[k].values())} of a class with no counterpart ({', '.join(self.unmapped[k])})")
            parts.append(f"{name}: {self.images[k]} images" + (f", dropped {'; '.join(drops)}" if drops else ""))
        return "combined " + " | ".join(parts)


ON_CONFLICT = ("keep-first", "drop")


def check_distinct(data) -> None:
    """Refuse the same dataset given twice (a folder, a file or a URL; compared as resolved paths)."""
    seen: dict[str, str] = {}
    for d in data:
        s = str(d)
        key = s if "://" in s else str(Path(s).expanduser().resolve())
        if key in seen:
            same = "" if seen[key] == s else f" (as {seen[key]})"
            raise SkinLesionError(f"{s} is given twice{same}; give each dataset once.")
        seen[key] = s


def combine(datasets, names=None, *, mapping=None, max_distance: int = 2, hashes=True, on_conflict: str = "keep-first"):
    """One :class:`~skinlesion.data.ham10000.Dataset` from several (see the module docstring)."""
    from ..classes import default_mapping, read_mapping

    from .dataset import Dataset

    if on_conflict not in ON_CONFLICT:
        raise SkinLesionError(f"Unknown on_conflict {on_conflict!r}; use {' or '.join(ON_CONFLICT)}.")
    names = list(names or [str(d.root) for d in datasets])
    for ds, name in zip(datasets, names):
        if ds.arrays is not None:
            raise SkinLesionError(
                f"{name} is a {ds.layout} (pixels without image files), which cannot be combined with other datasets; "
                "combine the image folders, then prepare the combination."
            )
    target = datasets[0].label_set
    report = CombineReport(on_conflict=on_conflict)
    frames = []
    seen: dict[str, str] = {}  # image id -> its class in the earlier dataset that gave it
    conflicted: set[str] = set()
    for k, (ds, name) in enumerate(zip(datasets, names)):
        table = (read_mapping(mapping, ds.label_set, target) if mapping else default_mapping(ds.label_set, target)) if k else None
        meta = ds.meta.copy()
        report.images.append(len(meta))
        if table is not None:
            codes = np.array(ds.label_set.codes)[meta["label"].to_numpy(int)]
            dest = pd.Series([table.get(c) for c in codes], index=meta.index)
            gone = dest.isna()
            report.unmapped.append({c: int(n) for c, n in pd.Series(codes[gone.to_numpy()]).value_counts().sort_index().items()})
            meta = meta.loc[~gone].copy()
            meta["dx"] = dest[~gone]
            meta["label"] = [target.index(c) for c in meta["dx"]]
        else:
            report.unmapped.append({})
        dup = meta["image_id"].isin(seen.keys())
        report.same_id.append(int(dup.sum()))
        dx = np.array(target.codes)[meta["label"].to_numpy(int)]
        clash = [(i, seen[i], c) for i, c, d in zip(meta["image_id"], dx, dup.to_numpy()) if d and seen[i] != c]
        report.conflicts.append(clash)
        conflicted |= {i for i, _, _ in clash}
        meta = meta.loc[~dup]
        seen.update(zip(meta["image_id"], np.array(target.codes)[meta["label"].to_numpy(int)]))
        meta = meta[[c for c in KEEP_COLUMNS if c in meta.columns]].copy()
        meta["dataset"] = name
        if "source" not in meta.columns:
            meta["source"] = name
        frames.append(meta)
    meta = pd.concat(frames, ignore_index=True)
    if on_conflict == "drop" and conflicted:
        meta = meta.loc[~meta["image_id"].isin(conflicted)].reset_index(drop=True)
    report.near_duplicate = [0] * len(datasets)
    if hashes and len(datasets) > 1:
        meta = _drop_near_duplicates(
            Dataset(root=datasets[0].root, layout="combined", meta=meta, label_set=target), names, max_distance, report
        )
    warnings = [w for ds in datasets for w in ds.warnings] + [report.sentence(names)]
    return Dataset(root=Path(datasets[0].root), layout="combined", meta=meta.reset_index(drop=True), warnings=warnings, label_set=target)


def _drop_near_duplicates(ds, names, max_distance: int, report: CombineReport) -> pd.DataFrame:
    """The combined table without images within ``max_distance`` pHash bits of an image of an earlier dataset."""
    from .audit import image_hashes, near_duplicate_pairs

    order = {n: k for k, n in enumerate(names)}
    src = ds.meta["dataset"].map(order).to_numpy()
    pairs = near_duplicate_pairs(_hashes(ds, image_hashes), max_distance)
    drop = set()
    for i, j, _ in pairs:
        a, b = int(i), int(j)
        if src[a] == src[b]:
            continue
        later = a if src[a] > src[b] else b
        drop.add(later)
    for r in drop:
        report.near_duplicate[src[r]] += 1
    return ds.meta.drop(index=sorted(drop))


_HASHES: dict[tuple, int] = {}  # (path, size, mtime) -> pHash: a cross-validation reads its data once per member


def _hashes(ds, image_hashes) -> np.ndarray:
    import os

    keys = []
    for p in ds.meta["path"]:
        st = os.stat(p)
        keys.append((str(p), st.st_size, st.st_mtime_ns))
    todo = [i for i, k in enumerate(keys) if k not in _HASHES]
    if todo:
        for i, h in zip(todo, image_hashes(ds, todo)):
            _HASHES[keys[i]] = int(h)
    return np.array([_HASHES[k] for k in keys], np.uint64)
