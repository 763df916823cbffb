"""Classification metrics for a model's classes and the malignant-vs-benign question.

Computed with scikit-learn from calibrated probabilities; :func:`compute_metrics`
returns the dictionary written to ``metrics.json``. Every function takes the label set
(``classes``, a :class:`skinlesion.classes.LabelSet`) the probabilities' columns follow;
HAM10000's seven by default, and any other number of columns must say which set it is.
"""

from __future__ import annotations

import numpy as np

from .calibration import ece
from .classes import HAM10000, LabelSet

SPECIFICITIES = (0.80, 0.90, 0.95)


def classes_for(probs, classes: LabelSet | None = None) -> LabelSet:
    """The label set of probability columns: ``classes``, or HAM10000's for seven columns (never a guess otherwise)."""
    k = np.asarray(probs).shape[1]
    classes = classes or (HAM10000 if k == len(HAM10000) else None)
    if classes is None or len(classes) != k:
        raise ValueError(f"{k} probability columns need their label set (got {classes})")
    return classes


def malignant_probability(probs: np.ndarray, classes: LabelSet | None = None) -> np.ndarray:
    mask = np.asarray(classes_for(probs, classes).malignant_mask)
    return np.asarray(probs)[:, mask].sum(axis=1)


def sensitivity_at_specificity(y_true: np.ndarray, score: np.ndarray, specificity: float) -> float:
    """Highest sensitivity reachable with specificity >= ``specificity`` (ROC-curve operating points)."""
    from sklearn.metrics import roc_curve

    if len(np.unique(y_true)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, score)
    ok = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def _renormalized(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return p / p.sum(axis=1, keepdims=True)


def compute_metrics(probs: np.ndarray, labels: np.ndarray, pred: np.ndarray | None = None, classes: LabelSet | None = None) -> dict:
    """Metrics of calibrated ``probs`` against ``labels``; ``pred``: the named classes (default: the most probable)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, int)
    classes = classes_for(probs, classes)
    codes, k = classes.codes, len(classes)
    pred = probs.argmax(axis=1) if pred is None else np.asarray(pred, int)
    present = sorted(set(labels.tolist()))
    prec, rec, f1, support = precision_recall_fscore_support(labels, pred, labels=list(range(k)), zero_division=0)
    cm = confusion_matrix(labels, pred, labels=list(range(k)))
    per_class = {}
    aucs = []
    for i, code in enumerate(codes):
        tn = cm.sum() - cm[i, :].sum() - cm[:, i].sum() + cm[i, i]
        fp = cm[:, i].sum() - cm[i, i]
        y = (labels == i).astype(int)
        auc = float(roc_auc_score(y, probs[:, i])) if 0 < y.sum() < len(y) else float("nan")
        if not np.isnan(auc):
            aucs.append(auc)
        per_class[code] = {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
            "f1": float(f1[i]),
            "auc": auc,
            "support": int(support[i]),
        }
    mal_true = np.asarray(classes.malignant_mask)[labels].astype(int)
    mal_score = malignant_probability(probs, classes)
    mal_auc = float(roc_auc_score(mal_true, mal_score)) if 0 < mal_true.sum() < len(mal_true) else float("nan")
    return {
        "n_images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)) if len(present) > 1 else float(rec[present[0]]),
        "f1_weighted": float(f1_score(labels, pred, average="weighted", labels=present, zero_division=0)),
        "f1_macro": float(f1_score(labels, pred, average="macro", labels=present, zero_division=0)),
        # one-vs-rest, macro over the classes present in the labels
        "auc_macro": float(np.mean(aucs)) if aucs else float("nan"),
        "nll": float(log_loss(labels, _renormalized(probs), labels=list(range(k)))),
        "ece": ece(probs, labels, 15),
        "per_class": per_class,
        "malignant_auc": mal_auc,
        "malignant_sensitivity_at_specificity": {
            f"{int(s * 100)}": sensitivity_at_specificity(mal_true, mal_score, s) for s in SPECIFICITIES
        },
        "confusion_matrix": cm.tolist(),
        "classes": list(codes),
        "label_set": classes.name,
    }


COVERAGES = (0.5, 0.7, 0.8, 0.9, 1.0)


def _binary_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of a probability of one event (equal-width bins)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(total)


def class_calibration(probs: np.ndarray, labels: np.ndarray, classes: LabelSet | None = None) -> dict:
    """Per class: mean predicted probability vs actual share, and one-vs-rest ECE; the same for
    the malignant/pre-malignant probability."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, int)
    classes = classes_for(probs, classes)
    out = {}
    for i, code in enumerate(classes.codes):
        y = (labels == i).astype(float)
        out[code] = {"mean_predicted": float(probs[:, i].mean()), "actual_share": float(y.mean()), "ece": _binary_ece(probs[:, i], y)}
    y = np.asarray(classes.malignant_mask)[labels].astype(float)
    p = malignant_probability(probs, classes)
    out["malignant"] = {"mean_predicted": float(p.mean()), "actual_share": float(y.mean()), "ece": _binary_ece(p, y)}
    return out


def risk_coverage(
    probs: np.ndarray, labels: np.ndarray, coverages=COVERAGES, pred: np.ndarray | None = None, classes: LabelSet | None = None
) -> list[dict]:
    """Accuracy and malignant sensitivity (named class malignant) on the most confident ``coverage`` of images."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, int)
    named = probs.argmax(axis=1) if pred is None else np.asarray(pred, int)
    order = np.argsort(-probs.max(axis=1), kind="stable")
    mal = np.asarray(classes_for(probs, classes).malignant_mask)
    rows = []
    for c in coverages:
        keep = order[: max(1, int(round(c * len(labels))))]
        pred = named[keep]
        pos = mal[labels[keep]]
        rows.append(
            {
                "coverage": float(c),
                "n": int(len(keep)),
                "min_confidence": float(probs[keep].max(axis=1).min()),
                "accuracy": float((pred == labels[keep]).mean()),
                "malignant_sensitivity": float(mal[pred[pos]].mean()) if pos.any() else float("nan"),
            }
        )
    return rows


def conformal_metrics(sets: np.ndarray, labels: np.ndarray, classes: LabelSet | None = None) -> dict:
    """Empirical coverage and mean size of prediction sets (bool N x classes), overall and per true class."""
    sets = np.asarray(sets, bool)
    labels = np.asarray(labels, int)
    covered = sets[np.arange(len(labels)), labels]
    size = sets.sum(axis=1)
    per = {}
    for i, code in enumerate(classes_for(sets, classes).codes):
        m = labels == i
        if m.any():
            per[code] = {"coverage": float(covered[m].mean()), "mean_size": float(size[m].mean()), "n": int(m.sum())}
    return {"coverage": float(covered.mean()), "mean_size": float(size.mean()), "per_class": per}


# ---- subgroups ---------------------------------------------------------------------------

AGE_BANDS = ((0, 30, "under 30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, 200, "75 and over"))
SMALL_GROUP = 30  # groups with fewer images are marked: their numbers are too uncertain to compare


def subgroup_labels(meta) -> dict[str, np.ndarray]:
    """Per attribute (age band, sex, body site; the skin tone's ITA band where ``meta`` has a ``skin_tone``
    column), each image's group name ("unknown" where missing). Age, sex and site are left out only when
    ``meta`` has none of them."""
    import pandas as pd

    df = meta if isinstance(meta, pd.DataFrame) else pd.DataFrame(list(meta))
    n = len(df)
    out = {}
    if any(c in df.columns for c in ("age", "sex", "localization")) or "skin_tone" not in df.columns:
        age = pd.to_numeric(df["age"], errors="coerce").to_numpy(float) if "age" in df.columns else np.full(n, np.nan)
        band = np.full(n, "unknown", dtype=object)
        for lo, hi, name in AGE_BANDS:
            band[(age >= lo) & (age < hi)] = name
        out["age"] = band
        for col in ("sex", "localization"):
            if col in df.columns:
                v = df[col].astype(object).where(df[col].notna(), "unknown").astype(str).str.strip().str.lower()
                v = v.where(~v.isin(["", "nan", "none", "unknown"]), "unknown")
                out[col] = v.to_numpy(object)
            else:
                out[col] = np.full(n, "unknown", dtype=object)
    if "skin_tone" in df.columns:
        out["skin_tone"] = df["skin_tone"].astype(object).where(df["skin_tone"].notna(), "unknown").astype(str).to_numpy(object)
    return out


def _group_order(attr: str, name: str):
    """Groups in table order: ITA bands from the lightest, others by name; "unknown" last."""
    from .skintone import BAND_NAMES

    if attr == "skin_tone" and name in BAND_NAMES:
        return (False, BAND_NAMES.index(name), "")
    return (name == "unknown", len(BAND_NAMES) if attr == "skin_tone" else 0, name)


def _cluster_counts(clusters, correct, labels, mal_true, mal_hit, k):
    """Per cluster (lesion or image): images and correct ones per true class, malignant ones and those caught."""
    ids, inv = np.unique(clusters, return_inverse=True)
    c = len(ids)
    per_class = np.zeros((c, k))
    right = np.zeros((c, k))
    np.add.at(per_class, (inv, labels), 1)
    np.add.at(right, (inv, labels), correct.astype(float))
    mal = np.bincount(inv, weights=mal_true.astype(float), minlength=c)
    caught = np.bincount(inv, weights=(mal_true & mal_hit).astype(float), minlength=c)
    return np.hstack([per_class, right, mal[:, None], caught[:, None]])


def _stats_from_counts(t, k):
    """(accuracy, balanced accuracy, malignant sensitivity) from summed counts (rows: resamples)."""
    per_class, right, mal, caught = t[..., :k], t[..., k : 2 * k], t[..., 2 * k], t[..., 2 * k + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = right.sum(-1) / per_class.sum(-1)
        recall = np.where(per_class > 0, right / np.where(per_class > 0, per_class, 1), np.nan)
        bal = np.nanmean(recall, axis=-1) if recall.ndim > 1 else np.nanmean(recall)
        sens = np.where(mal > 0, caught / np.where(mal > 0, mal, 1), np.nan)
    return acc, bal, sens


def subgroup_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    meta,
    *,
    pred: np.ndarray | None = None,
    malignant_threshold: float | None = None,
    groups=None,
    n_boot: int = 1000,
    seed: int = 0,
    malignant_mask=HAM10000.malignant_mask,
) -> dict:
    """Accuracy, balanced accuracy and malignant sensitivity (malignant probability at or above the tier's
    threshold) per age band, sex and body site (and ITA band of the skin, :func:`subgroup_labels`), with
    bootstrap 95 % intervals.

    ``groups`` (e.g. lesion ids): the bootstrap resamples whole groups, because images of one lesion are
    not independent; without it, images. Groups under :data:`SMALL_GROUP` images are marked ``small``.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, int)
    k = probs.shape[1]
    pred = probs.argmax(1) if pred is None else np.asarray(pred, int)
    mask = np.asarray(malignant_mask, bool)
    mal_true = mask[labels]
    mal_p = probs[:, mask].sum(1)
    mal_hit = mal_p >= malignant_threshold if malignant_threshold is not None else mask[pred]
    correct = pred == labels
    clusters = np.asarray(groups) if groups is not None else np.arange(len(labels))
    rng = np.random.default_rng(seed)
    out = {
        "malignant_threshold": malignant_threshold,
        "small_group": SMALL_GROUP,
        "bootstrap": n_boot,
        "resampled": "lesions" if groups is not None else "images",
        "attributes": {},
    }
    for attr, names in subgroup_labels(meta).items():
        rows = []
        for name in sorted(set(names), key=lambda s: _group_order(attr, s)):
            idx = np.flatnonzero(names == name)
            counts = _cluster_counts(clusters[idx], correct[idx], labels[idx], mal_true[idx], mal_hit[idx], k)
            acc, bal, sens = _stats_from_counts(counts.sum(0), k)
            # each resample draws as many clusters as there are, with replacement: multinomial weights on the clusters
            weights = rng.multinomial(len(counts), np.full(len(counts), 1 / len(counts)), size=n_boot)
            boots = np.stack(_stats_from_counts(weights @ counts, k), 1)

            def ci(col):
                v = boots[:, col][np.isfinite(boots[:, col])]
                return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else [float("nan")] * 2

            rows.append(
                {
                    "group": str(name),
                    "n": int(len(idx)),
                    "small": bool(len(idx) < SMALL_GROUP),
                    "accuracy": float(acc),
                    "accuracy_ci": ci(0),
                    "balanced_accuracy": float(bal),
                    "balanced_accuracy_ci": ci(1),
                    "n_malignant": int(mal_true[idx].sum()),
                    "malignant_sensitivity": float(sens),
                    "malignant_sensitivity_ci": ci(2),
                }
            )
        out["attributes"][attr] = rows
    return out
