"""Honest evaluation: metrics.json, confusion matrix, ROC curves, reliability and risk-coverage, report.md.

Beyond accuracy and AUC, the report checks what the analysis layer (:mod:`skinlesion.posthoc`)
promises: per-class calibration (mean predicted probability vs actual share, one-vs-rest ECE)
and the malignant probability's; accuracy and malignant sensitivity of the most confident
50/70/80/90/100 % (risk-coverage); conformal coverage and mean set size, overall and per class;
the refer rate and the tier's malignant sensitivity.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .calibration import ece, reliability, softmax
from .classes import label_set
from .data.ham10000 import Dataset
from .errors import SkinLesionError
from .metrics import compute_metrics, malignant_probability


def dataset_outputs(
    net,
    prep,
    ds: Dataset,
    positions=None,
    *,
    tta: bool = False,
    stages: list[str] | None = None,
    batch_size: int = 128,
    device: str | None = None,
    num_workers: int | None = None,
    progress=None,
    transform=None,
    views: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The ONE inference loop over a dataset: (logits, pooled OOD features of ``stages``) for rows ``positions``.

    Evaluation, post-training (TTA choice, calibration), cross-validation and the OOD fit all use it.
    With ``tta`` the logits combine the 8 flips/rotations; the features are always those of the plain view.
    With ``views`` (and ``tta``) the logits are each view's, shape (8, N, C), the plain view first, so
    one pass gives both the plain and the combined (:func:`~skinlesion.preprocess.tta_logits`) logits.
    ``progress(n)`` is called after each batch with the number of images it held. ``transform``
    (PIL image -> tensor) replaces ``prep.eval_transform()``: the OOD fit uses it for round-field copies.

    The network runs in channels-last memory layout (about 1.3-1.6x faster on CPU for these
    depthwise-convolution backbones; the same numbers to float rounding) and is handed back in
    the default layout, which the safetensors writer needs.
    """
    import torch

    from .data.loader import ImageSet, make_loader
    from .models import forward_with_features
    from .preprocess import tta_logits, tta_views

    positions = np.arange(len(ds)) if positions is None else np.asarray(positions, int)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    last = torch.channels_last
    net = net.to(device).eval()
    loader = make_loader(ImageSet(ds, positions, transform or prep.eval_transform()), batch_size, num_workers=num_workers)
    logits, feats = [], []
    try:
        net.to(memory_format=last)
        with torch.inference_mode():
            for x, _, _ in loader:
                x = x.to(device).contiguous(memory_format=last)
                lg, f = forward_with_features(net, x, stages or [])
                if tta:
                    per_view = torch.stack([lg] + [net(v.contiguous(memory_format=last)) for v in tta_views(x)[1:]]).float().cpu()
                    lg = per_view if views else torch.from_numpy(tta_logits(per_view.numpy()))
                logits.append(lg.float().cpu())
                feats.append(f.float().cpu())
                if progress is not None:
                    progress(len(x))
    finally:
        net.to(memory_format=torch.contiguous_format)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(logits, dim=1 if tta and views else 0).numpy(), torch.cat(feats).numpy()


def dataset_logits(net, prep, ds: Dataset, positions=None, *, tta: bool = False, **kwargs) -> np.ndarray:
    """Raw logits for rows ``positions`` of ``ds`` (all rows when None), optionally 8-view TTA."""
    return dataset_outputs(net, prep, ds, positions, tta=tta, **kwargs)[0]


def map_labels(ds: Dataset, pos: np.ndarray, classes, mapping=None):
    """The rows of ``pos`` whose class maps onto ``classes`` and their labels there, and what was mapped and left out."""
    from .classes import default_mapping, read_mapping

    table = read_mapping(mapping, ds.label_set, classes) if mapping is not None else default_mapping(ds.label_set, classes)
    src = np.array(ds.label_set.codes)[ds.labels[pos]]
    dest = np.array([table.get(c) or "" for c in src], dtype=object)
    keep = dest != ""
    if not keep.any():
        raise SkinLesionError(
            f"None of the {len(pos)} images' classes ({', '.join(sorted(set(src)))}) map onto the model's "
            f"({', '.join(classes.codes)}); pass --map FILE (from,to) saying what they mean."
        )
    unmapped = {c: int((src[~keep] == c).sum()) for c in sorted(set(src[~keep]))}
    info = {
        "data_label_set": ds.label_set.name,
        "model_label_set": classes.name,
        "mapping": {k: v for k, v in table.items()},
        "n_mapped": int(keep.sum()),
        "n_unmapped": int((~keep).sum()),
        "unmapped": unmapped,
    }
    return pos[keep], np.array([classes.index(c) for c in dest[keep]]), info


def per_source(probs, labels, pred, sources, classes) -> list[dict]:
    """Accuracy, balanced accuracy and AUCs per image source (the centre or site the metadata names)."""
    rows = []
    for src in sorted(set(sources)):
        m = sources == src
        r = compute_metrics(probs[m], labels[m], pred[m], classes)
        rows.append(
            {"source": src, "n": int(m.sum()), **{k: r[k] for k in ("accuracy", "balanced_accuracy", "auc_macro", "malignant_auc")}}
        )
    return rows


def split_warnings(split, subset) -> list[str]:
    """What makes numbers on a manifest's subset optimistic: its images sharing a lesion with train."""
    if split is None:
        return []
    from .data.split import leaked_images, read_manifest

    subset = subset or "test"
    if subset == "train":
        return []
    m = read_manifest(split)
    n, total = leaked_images(m, subset), int((m["split"] == subset).sum())
    if not n:
        return []
    return [
        f"{n} of the {total} {subset} images in {Path(split).name} share a lesion with its train images, so these "
        "numbers are optimistic; evaluate on a lesion-grouped split (skinlesion split --kind lesion)."
    ]


def select_rows(ds: Dataset, split: str | Path | None = None, subset: str | None = None, ids: str | Path | None = None) -> np.ndarray:
    """Row positions of ``ds`` chosen by a split manifest subset and/or an id list CSV."""
    from .data.split import read_manifest

    keep = np.ones(len(ds), bool)
    image_ids = ds.meta["image_id"]
    if split is not None:
        m = read_manifest(split)
        subset = subset or "test"
        chosen = set(m.loc[m["split"] == subset, "image_id"])
        if not chosen:
            raise SkinLesionError(f"The split {Path(split).name} has no '{subset}' images; choose --subset train, val or test.")
        unknown = chosen - set(image_ids)
        if unknown:
            raise SkinLesionError(
                f"{len(unknown)} image(s) of the split's {subset} subset are not in this dataset "
                f"(first: {sorted(unknown)[0]}); use the split made for this dataset."
            )
        keep &= image_ids.isin(chosen).to_numpy()
    elif subset is not None:
        if "split" not in ds.meta.columns:
            raise SkinLesionError(f"--subset {subset} needs --split FILE, or a dataset with an official split column.")
        keep &= (ds.meta["split"].astype(str) == subset).to_numpy()
    if ids is not None:
        p = Path(ids)
        if not p.exists():
            raise SkinLesionError(f"The id list {p} does not exist.")
        lst = pd.read_csv(p, dtype=str)
        col = "image_id" if "image_id" in lst.columns else lst.columns[0]
        wanted = set(lst[col].str.strip())
        unknown = wanted - set(image_ids)
        if unknown:
            raise SkinLesionError(f"{len(unknown)} id(s) in {p.name} are not in this dataset (first: {sorted(unknown)[0]}).")
        keep &= image_ids.isin(wanted).to_numpy()
    pos = np.flatnonzero(keep)
    if len(pos) == 0:
        raise SkinLesionError("No images are left to evaluate after applying --split/--subset/--ids.")
    return pos


def model_probabilities(logits: np.ndarray, cfg, aux: dict, meta=None) -> np.ndarray:
    """Calibrated probabilities from combined logits, through the bundle's calibration and
    (when the model uses it) metadata fusion: the same rules as :class:`skinlesion.predict.Predictor`."""
    from .posthoc import apply_metadata, calibrate, encode_metadata

    probs = calibrate(logits, cfg.temperature, cfg.class_bias)
    if cfg.metadata and "meta.coef" in aux:
        meta_x = encode_metadata(meta if meta is not None else [{}] * len(probs))
        probs = apply_metadata(np.log(np.clip(probs, 1e-12, None)), meta_x, aux)
    return probs


def analysis_metrics(probs: np.ndarray, labels: np.ndarray, cfg=None, aux: dict | None = None, rule: str | None = None) -> dict:
    """Per-class calibration, risk-coverage and (when the model has them) conformal sets, refer, tier and
    the decision rules (each rule's accuracy, balanced accuracy and per-class recall)."""
    from .metrics import class_calibration, conformal_metrics, risk_coverage

    if cfg is None:
        return {"class_calibration": class_calibration(probs, labels), "risk_coverage": risk_coverage(probs, labels)}
    from .posthoc import TIER_ROUTINE, analyse, decide, rule_metrics

    classes = cfg.labels
    pred = decide(probs, cfg.decision, rule)
    out = {
        "class_calibration": class_calibration(probs, labels, classes),
        "risk_coverage": risk_coverage(probs, labels, pred=pred, classes=classes),
    }
    out["decision_rules"] = rule_metrics(probs, labels, cfg.decision, classes.codes)
    rules = analyse(probs, cfg, aux or {})
    if cfg.conformal and "conformal.alphas" in (aux or {}):
        sets = np.array([[c in r["prediction_set"] for c in classes.codes] for r in rules])
        out["conformal"] = {"confidence": cfg.conformal["confidence"], **conformal_metrics(sets, labels, classes)}
    if cfg.refer:
        refer = np.array([r["refer"] for r in rules])
        kept = ~refer
        out["refer"] = {
            "rate": float(refer.mean()),
            "threshold": cfg.refer["confidence_threshold"],
            "accuracy_kept": float((pred[kept] == labels[kept]).mean()) if kept.any() else float("nan"),
        }
    if cfg.tier:
        mal = np.asarray(classes.malignant_mask)[labels]
        routine = np.array([r["tier"] == TIER_ROUTINE for r in rules])
        out["tier"] = {
            "malignant_threshold": cfg.tier["malignant_threshold"],
            "malignant_sensitivity": float((~routine[mal]).mean()) if mal.any() else float("nan"),
            "benign_routine_rate": float(routine[~mal].mean()) if (~mal).any() else float("nan"),
        }
    return out


def evaluate_model(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split=None,
    subset=None,
    ids=None,
    tta: bool | None = None,
    allow_missing: bool = False,
    use_metadata: bool = True,
    truth=None,
    progress=None,
    rule: str | None = None,
    mapping=None,
) -> dict:
    """Evaluate ``model`` on ``data``; write metrics.json, plots and report.md into ``out``.

    A model that uses patient data reads it from the dataset's metadata (age, sex, localization);
    ``use_metadata=False`` evaluates it as if every field were missing. ``truth``: an ISIC 2018
    ground-truth CSV whose images and labels are evaluated (instead of the dataset's labels).
    ``progress``: ``(images done, images in all)``, called as the network works through them.
    ``rule``: the decision rule naming each image's class (default: the model's own); the report
    also shows every rule the model holds.

    External validation: a dataset of another label set (ISIC 2019 for a HAM10000 model, say) is
    evaluated through a stated mapping of its classes onto the model's
    (:func:`skinlesion.classes.default_mapping`, with ``mapping``, a ``from,to`` CSV, on top); the
    images whose class has no counterpart are left out and reported. Where the metadata names an
    image's source (a ``source`` column), the metrics are also given per source.
    """
    from .bundle import load_model
    from .data.ham10000 import load_dataset
    from .errors import lock_folder
    from .posthoc import decide, rule_log_weights

    if Path(out).exists() and not Path(out).is_dir():
        raise SkinLesionError(f"--out {out} is a file; pass a folder for the report (it is created if missing).")
    lock = lock_folder(out, "evaluation")  # noqa: F841 (one writer of the report folder, held until this returns)
    net, cfg, aux = load_model(model, with_extra=True)
    rule = rule or cfg.rule
    rule_log_weights(cfg.decision, rule, len(cfg.labels))  # an unknown rule is refused before any work
    ds = load_dataset(data, allow_missing=allow_missing)
    if truth is not None:  # an ISIC 2018 ground-truth CSV chooses the images and gives their labels
        if split is not None or ids is not None or subset is not None:
            raise SkinLesionError("--labels chooses the images to evaluate; drop --split, --subset and --ids.")
        from .isic import read_truth

        truth_ids, labels = read_truth(truth)
        by_id = {iid: i for i, iid in enumerate(ds.meta["image_id"])}
        unknown = [i for i in truth_ids if i not in by_id]
        if unknown:
            raise SkinLesionError(
                f"{len(unknown)} image(s) of {Path(truth).name} are not in {data} (first: {unknown[0]}); pass the dataset that holds them."
            )
        pos = np.array([by_id[i] for i in truth_ids])
    else:
        pos = select_rows(ds, split, subset, ids)
        labels = ds.labels[pos]
    warnings = split_warnings(split, subset)
    external = None
    if truth is None and (mapping is not None or ds.label_set.codes != cfg.labels.codes):
        pos, labels, external = map_labels(ds, pos, cfg.labels, mapping)
        if external["n_unmapped"]:
            first = ", ".join(f"{n} {c}" for c, n in external["unmapped"].items())
            warnings.append(
                f"{external['n_unmapped']} image(s) have a class with no counterpart among the model's ({first}) and were left out; "
                "pass --map FILE to map them."
            )
    tta = cfg.tta if tta is None else tta  # None: the model's own choice, made on held-out data
    done = [0]

    def step(n):
        done[0] += n
        if progress is not None:
            progress(done[0], len(pos))

    logits = dataset_logits(net, cfg.prep, ds, pos, tta=tta, progress=step)
    meta = ds.meta.iloc[pos] if use_metadata else None
    probs = model_probabilities(logits, cfg, aux, meta)
    pred = decide(probs, cfg.decision, rule)
    metrics = compute_metrics(probs, labels, pred, cfg.labels)
    metrics["decision_rule"] = rule
    metrics["ece_uncalibrated"] = ece(softmax(logits, 1.0), labels)
    metrics["temperature"] = cfg.temperature
    metrics["tta"] = tta
    metrics["metadata"] = bool(cfg.metadata) and use_metadata
    metrics["model"] = str(model)
    metrics["data"] = str(data)
    metrics["subset"] = subset if truth is None else f"the images of {Path(truth).name}"
    metrics["warnings"] = warnings
    if external is not None:
        metrics["external"] = external
    metrics.update(analysis_metrics(probs, labels, cfg, aux, rule))
    if "source" in ds.meta.columns:
        src = ds.meta["source"].iloc[pos]
        src = np.array(["not stated" if pd.isna(v) or str(v).strip() == "" else str(v) for v in src], dtype=object)
        metrics["per_source"] = per_source(probs, labels, pred, src, cfg.labels)
    from .metrics import subgroup_metrics
    from .skintone import bands_of, dataset_itas, distribution_of

    itas = dataset_itas(ds, pos, cfg.prep)  # each image's skin tone, measured as an upload's is
    metrics["skin_tone"] = distribution_of(itas)
    sub_meta = ds.meta.iloc[pos].assign(skin_tone=bands_of(itas))
    metrics["subgroups"] = subgroup_metrics(
        probs,
        labels,
        sub_meta,
        pred=pred,
        malignant_threshold=(cfg.tier or {}).get("malignant_threshold"),
        groups=sub_meta["lesion_id"].to_numpy() if "lesion_id" in sub_meta.columns else None,
        malignant_mask=cfg.labels.malignant_mask,
    )
    write_report(metrics, probs, labels, Path(out), ids=ds.meta["image_id"].to_numpy()[pos], pred=pred)
    return metrics


def write_report(metrics: dict, probs: np.ndarray, labels: np.ndarray, out: Path, ids=None, pred=None) -> None:
    """metrics.json, predictions.csv (``pred``: the named classes, default the most probable), the plots and report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from .errors import atomic_text, atomic_write

    if out.exists() and not out.is_dir():
        raise SkinLesionError(f"--out {out} is a file; pass a folder for the report (it is created if missing).")
    atomic_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    classes = label_set(tuple(metrics["classes"]))
    codes = classes.codes
    if ids is not None:
        pred_df = pd.DataFrame(probs, columns=list(codes))
        pred_df.insert(0, "image_id", ids)
        pred_df.insert(1, "label", [codes[i] for i in labels])
        pred_df.insert(2, "pred", [codes[i] for i in (probs.argmax(1) if pred is None else pred)])
        atomic_write(out / "predictions.csv", lambda t: pred_df.to_csv(t, index=False))

    cm = np.asarray(metrics["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(6, 5))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(codes)):
        for j in range(len(codes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(codes)), codes)
    ax.set_yticks(range(len(codes)), codes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (colour: row-normalised)")
    fig.tight_layout()
    atomic_write(out / "confusion_matrix.png", lambda t: fig.savefig(t, dpi=110, format="png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    for i, c in enumerate(codes):
        y = labels == i
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, probs[:, i])
            ax.plot(fpr, tpr, label=f"{c} (AUC {metrics['per_class'][c]['auc']:.3f})")
    mal = np.asarray(classes.malignant_mask)[labels]
    if 0 < mal.sum() < len(mal):
        fpr, tpr, _ = roc_curve(mal, malignant_probability(probs, classes))
        ax.plot(fpr, tpr, "k--", label=f"malignant vs benign (AUC {metrics['malignant_auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves (one-vs-rest)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(out / "roc_curves.png", lambda t: fig.savefig(t, dpi=110, format="png"))
    plt.close(fig)

    rc = metrics.get("risk_coverage")
    if rc:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([r["coverage"] for r in rc], [r["accuracy"] for r in rc], "o-", label="accuracy")
        ax.plot([r["coverage"] for r in rc], [r["malignant_sensitivity"] for r in rc], "s--", label="malignant sensitivity")
        ax.set_xlabel("coverage (most confident share of images answered)")
        ax.set_ylabel("on the answered images")
        ax.set_title("Risk-coverage")
        ax.legend()
        fig.tight_layout()
        atomic_write(out / "risk_coverage.png", lambda t: fig.savefig(t, dpi=110, format="png"))
        plt.close(fig)
    edges, rows = reliability(probs, labels, 15)
    fig, ax = plt.subplots(figsize=(5, 5))
    centers = (edges[:-1] + edges[1:]) / 2
    ax.bar(centers, [r[1] if r[2] else 0 for r in rows], width=1 / 15, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {metrics['ece']:.3f})")
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "reliability.png", lambda t: fig.savefig(t, dpi=110, format="png"))
    plt.close(fig)

    m = metrics
    lines = [
        "# Evaluation report",
        "",
        f"Model: `{m.get('model', '')}`  ",
        f"Data: `{m.get('data', '')}`, subset: {m.get('subset') or 'all'}, images: {m['n_images']}, "
        f"TTA: {m.get('tta', False)}, temperature: {m.get('temperature', 1.0):.3f}"
        + (f", decision rule: {m['decision_rule']}" if m.get("decision_rule") else ""),
        "",
    ]
    lines += [f"**Warning:** {w}  " for w in m.get("warnings", [])] + ([""] if m.get("warnings") else [])
    ext = m.get("external")
    if ext:
        pairs = ", ".join(f"{k} -> {v or 'left out'}" for k, v in ext["mapping"].items())
        lines += [
            f"External validation: the data's {ext['data_label_set']} classes mapped onto the model's {ext['model_label_set']} "
            f"ones ({pairs}); "
            f"{ext['n_mapped']} images evaluated, {ext['n_unmapped']} left out"
            + (f" ({', '.join(f'{n} {c}' for c, n in ext['unmapped'].items())})" if ext["unmapped"] else "")
            + ".",
            "",
        ]
    lines += metric_lines(m)
    lines += analysis_lines(m)
    if m.get("per_source"):
        lines += [
            "",
            "Per source:",
            "",
            "| source | images | accuracy | balanced accuracy | macro AUC | malignant AUC |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['source']} | {r['n']} | {r['accuracy']:.4f} | {r['balanced_accuracy']:.4f} | {r['auc_macro']:.4f} | {r['malignant_auc']:.4f} |"
            for r in m["per_source"]
        ]
    lines += subgroup_lines(m.get("subgroups"))
    lines += [
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![ROC curves](roc_curves.png)",
        "",
        "![reliability diagram](reliability.png)",
        "",
        "![risk-coverage](risk_coverage.png)",
        "",
    ]
    atomic_text(out / "report.md", "\n".join(lines))


METRIC_KEYS = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "auc_macro", "malignant_auc", "ece", "ece_uncalibrated", "nll")


def metric_lines(m: dict, keys=METRIC_KEYS) -> list[str]:
    """Markdown tables of the summary metrics (those of ``keys`` present) and the per-class ones."""
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {m[k]:.4f} |" for k in keys if k in m]
    lines += [f"| malignant sensitivity at {s} % specificity | {v:.4f} |" for s, v in m["malignant_sensitivity_at_specificity"].items()]
    lines += ["", "| class | precision | recall | specificity | F1 | AUC | images |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [
        f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['specificity']:.3f} | {r['f1']:.3f} | {r['auc']:.3f} | {r['support']} |"
        for c, r in m["per_class"].items()
    ]
    return lines


ATTRIBUTE_NAMES = {"localization": "body site", "skin_tone": "skin tone (ITA band)"}


def subgroup_lines(sub: dict | None) -> list[str]:
    """Markdown tables of the subgroup metrics (age band, sex, body site, skin tone), with their 95 % intervals."""
    if not sub:
        return []

    def cell(v, ci):
        return "n/a" if v is None or v != v else f"{v:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"

    t = sub.get("malignant_threshold")
    sens = f"malignant sensitivity (probability >= {t:.3f})" if t is not None else "malignant sensitivity (named class)"
    lines = [
        "",
        f"Subgroups (95 % bootstrap intervals over {sub['bootstrap']} resamples of {sub['resampled']}; "
        f"* marks groups under {sub['small_group']} images, too few to compare):",
    ]
    for attr, rows in sub["attributes"].items():
        lines += [
            "",
            f"| {ATTRIBUTE_NAMES.get(attr, attr)} | images | accuracy | balanced accuracy | malignant | {sens} |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            lines.append(
                f"| {r['group']}{' *' if r['small'] else ''} | {r['n']} | {cell(r['accuracy'], r['accuracy_ci'])} | "
                f"{cell(r['balanced_accuracy'], r['balanced_accuracy_ci'])} | {r['n_malignant']} | "
                f"{cell(r['malignant_sensitivity'], r['malignant_sensitivity_ci'])} |"
            )
    return lines


def analysis_lines(m: dict) -> list[str]:
    """Markdown tables for per-class calibration, risk-coverage, conformal sets, refer and tier."""
    lines = []
    if "decision_rules" in m:
        codes = list(next(iter(m["decision_rules"].values()))["recall"])
        lines += [
            "",
            "Decision rules (which class is named first; the probabilities are the same):",
            "",
            "| rule | accuracy | balanced accuracy | " + " | ".join(f"recall {c}" for c in codes) + " |",
            "| --- " * (3 + len(codes)) + "|",
        ]
        for rule, r in m["decision_rules"].items():
            lines.append(
                f"| {rule} | {r['accuracy']:.4f} | {r['balanced_accuracy']:.4f} | "
                + " | ".join(f"{r['recall'][c]:.3f}" for c in codes)
                + " |"
            )
    if "class_calibration" in m:
        lines += [
            "",
            "Per-class calibration (mean predicted probability vs actual share; one-vs-rest ECE):",
            "",
            "| class | mean predicted | actual share | ECE |",
            "| --- | --- | --- | --- |",
        ]
        for c, r in m["class_calibration"].items():
            lines.append(f"| {c} | {r['mean_predicted']:.4f} | {r['actual_share']:.4f} | {r['ece']:.4f} |")
    if "risk_coverage" in m:
        lines += [
            "",
            "Risk-coverage (answering only the most confident images):",
            "",
            "| coverage | images | min confidence | accuracy | malignant sensitivity |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in m["risk_coverage"]:
            lines.append(
                f"| {r['coverage']:.0%} | {r['n']} | {r['min_confidence']:.3f} | {r['accuracy']:.4f} | {r['malignant_sensitivity']:.4f} |"
            )
    if "conformal" in m:
        c = m["conformal"]
        lines += [
            "",
            f"Conformal prediction sets ({c['confidence']:.0%}): coverage {c['coverage']:.4f}, mean size {c['mean_size']:.2f}",
            "",
            "| true class | coverage | mean set size | images |",
            "| --- | --- | --- | --- |",
        ]
        for k, r in c["per_class"].items():
            lines.append(f"| {k} | {r['coverage']:.4f} | {r['mean_size']:.2f} | {r['n']} |")
    if "refer" in m:
        r = m["refer"]
        lines += [
            "",
            f"Refer when unsure (confidence < {r['threshold']:.3f}): {r['rate']:.1%} referred; "
            f"accuracy on the rest {r['accuracy_kept']:.4f}.",
        ]
    if "tier" in m:
        t = m["tier"]
        lines += [
            "",
            f"Triage tier (malignant probability >= {t['malignant_threshold']:.3f}, or unsure): malignant "
            f"sensitivity {t['malignant_sensitivity']:.4f} (not 'routine'); benign lesions called routine {t['benign_routine_rate']:.1%}.",
        ]
    return lines
