"""The ``skinlesion info`` summary of a dataset, and what a run on it is warned of (``train``, ``split``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .ham10000 import OPTIONAL_COLUMNS, Dataset


def describe(ds: Dataset, problems: list[str] | None = None) -> str:
    m = ds.meta
    labels = ds.label_set
    lines = [f"dataset: {ds.root}", f"layout: {ds.layout}", f"images: {len(m)}"]
    lines.append(f"label set: {labels.name} ({len(labels)} classes: {', '.join(labels.codes)})")
    lines.append("")
    lines.append(f"{'class':<6} {'images':>7} {'share':>7}  name")
    counts = m["dx"].value_counts()
    for d in labels.diagnoses:
        n = int(counts.get(d.code, 0))
        lines.append(f"{d.code:<6} {n:>7} {100 * n / max(len(m), 1):6.1f}%  {d.name}")
    if "split" in m.columns and m["split"].notna().any():
        lines.append("")
        lines.append(
            "official split: "
            + ", ".join(f"{s} {int(n)}" for s, n in m["split"].value_counts().reindex(["train", "val", "test"]).dropna().items())
        )
    per_lesion = m.groupby("lesion_id").size()
    by_patient = "patient_id" in m.columns and (m["lesion_id"].astype(str) == m["patient_id"].astype(str)).all()
    unit = "patient" if by_patient else "lesion"
    lines.append("")
    lines.append(
        f"{unit}s: {len(per_lesion)}"
        + (" (lesion_id holds the patient id: splits and folds group by patient)" if unit == "patient" else "")
    )
    lines.append(
        f"images per {unit}: mean {per_lesion.mean():.2f}, max {per_lesion.max()}, "
        f"{unit}s with more than one image: {int((per_lesion > 1).sum())}"
    )
    lines.append("")
    lines.append("metadata coverage:")
    for col in [*OPTIONAL_COLUMNS, *(c for c in ("source", "copyright_license") if c in m.columns)]:
        if col not in m.columns:
            lines.append(f"  {col:<13} absent")
            continue
        vals = m[col]
        known = vals.notna() & ~vals.astype(str).str.strip().str.lower().isin(["unknown", "", "nan"])
        extra = ""
        if col == "age" and known.any():
            ages = pd.to_numeric(vals[known], errors="coerce")
            extra = f" (range {ages.min():.0f}-{ages.max():.0f}, median {ages.median():.0f})"
        elif known.any():
            top = vals[known].value_counts().head(3)
            extra = " (" + ", ".join(f"{k} {v}" for k, v in top.items()) + ")"
        lines.append(f"  {col:<13} {100 * known.mean():5.1f}% known{extra}")
    if ds.arrays is not None:
        lines.append("")
        lines.append(f"image size: {ds.arrays.shape[2]}x{ds.arrays.shape[1]} (arrays)")
    issues = list(ds.warnings) + list(problems or [])
    lines.append("")
    if issues:
        lines.append(f"problems ({len(issues)}):")
        lines.extend(f"  - {p}" for p in issues[:20])
        if len(issues) > 20:
            lines.append(f"  ... and {len(issues) - 20} more")
    else:
        lines.append("problems: none")
    return "\n".join(lines)


def empty_classes(labels, label_set, *, where: str = "training") -> list[str]:
    """One warning naming the classes of ``label_set`` with no image among ``labels`` (class indices).

    A model still has an output for such a class (an 8-class ISIC 2019 model with no scc image), which it cannot
    learn: its loss weight and prior are set from a count clamped to 1.
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(label_set))
    empty = [c for c, n in zip(label_set.codes, counts) if n == 0]
    if not empty:
        return []
    return [
        f"{len(empty)} of the {len(label_set)} classes of the {label_set.name} label set have no {where} image "
        f"({', '.join(empty)}): the model cannot learn them; add images of them, or expect it never to name them."
    ]


def training_warnings(ds: Dataset, rows) -> list[str]:
    """What a run on ``ds`` is told before it trains on its ``rows`` (positions): the readers' own warnings (as
    ``info`` and ``split`` print them: unlabelled or UNK rows, missing metadata, what combining dropped) and the
    classes without a training image."""
    return [*ds.warnings, *empty_classes(ds.labels[np.asarray(rows, dtype=int)], ds.label_set)]
