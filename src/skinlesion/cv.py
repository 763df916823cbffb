"""Cross-validated ensembles: K members on lesion-grouped folds, and their out-of-fold predictions.

``train_cv(cfg, k)`` splits all labelled images into ``k`` lesion-grouped, class-stratified
folds (:func:`skinlesion.data.split.cv_folds`), trains member ``i`` on the other folds with
fold ``i`` as its validation set (model selection, early stopping), then predicts fold ``i``
with it. Every image thus gets exactly one out-of-fold (OOF) prediction from the member that
never saw it: the honest validation set on which :mod:`skinlesion.posthoc` fits everything
that follows training (temperature and class priors, TTA, OOD threshold, refer thresholds,
conformal sets, the metadata fusion) and on which the report and model card quote metrics.

The run folder holds ``folds.csv`` (image, lesion, fold), ``fold{i}/`` (each member's own
training run), ``oof.csv`` (per image: fold, label and the member's logits without and with
TTA) and, once assembled, the ensemble bundle ``model.safetensors`` + ``model.json``.
A killed run resumes: finished members are kept, an unfinished one continues from its last epoch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import Interrupted, SkinLesionError, atomic_text, atomic_write, lock_folder

DONE = "MEMBER_DONE"


def _folds(out: Path, meta: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    from .data.split import cv_folds

    path = out / "folds.csv"
    if path.exists():
        saved = pd.read_csv(path, dtype={"image_id": str})
        if saved["fold"].max() + 1 != k or set(saved["image_id"]) != set(meta["image_id"]):
            raise SkinLesionError(
                f"{out} holds a cross-validation run with other folds or images; use --folds "
                f"{int(saved['fold'].max()) + 1} with the same data to resume it, or choose a new --out."
            )
        return saved.set_index("image_id").loc[meta["image_id"], "fold"].to_numpy()
    folds = cv_folds(meta, k, seed)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"image_id": meta["image_id"], "lesion_id": meta["lesion_id"], "dx": meta["dx"], "fold": folds})
    atomic_write(path, lambda t: table.to_csv(t, index=False))
    return folds


def train_members(cfg, k: int) -> tuple[Path, np.ndarray]:
    """Train the ``k`` members (skipping finished ones); returns (run folder, fold of each image)."""
    from .data.ham10000 import load_dataset
    from .data.split import fold_manifest
    from .train import train

    out = Path(cfg.out)
    ds = load_dataset(cfg.data, on_conflict=cfg.on_conflict)
    for w in ds.warnings:  # as `info` and `split` say them; each member names its classes without a training image
        print(f"warning: {w}", file=sys.stderr, flush=True)
    lock = lock_folder(out, "cross-validation run")  # noqa: F841 (held until this function returns)
    folds = _folds(out, ds.meta, k, cfg.seed)
    atomic_text(out / "cv_config.json", json.dumps({**asdict(cfg), "folds": k}, indent=2))
    for i in range(k):
        member = out / f"fold{i}"
        if (member / DONE).exists():
            continue
        member.mkdir(parents=True, exist_ok=True)
        split = member / "fold_split.csv"
        atomic_write(split, lambda t: fold_manifest(ds.meta, folds, i).to_csv(t, index=False))
        mcfg = replace(cfg, split=str(split), out=str(member), seed=cfg.seed + i)
        print(
            f"member {i + 1} of {k}: training on {int((folds != i).sum())} images, selecting on fold {i} "
            f"({int((folds == i).sum())} images)",
            flush=True,
        )
        try:
            train(mcfg, resume=(member / "metrics.csv").exists() or (member / "checkpoints" / "last.ckpt").exists(), finish_model=False)
        except Interrupted:
            raise Interrupted(
                f"continue with the same `skinlesion train ... --folds {k} --out {out}`: finished members are kept, "
                f"member {i + 1} continues from its last finished epoch"
            ) from None
        (member / DONE).write_text("")
    return out, folds


def oof_logits(out: Path, data, folds: np.ndarray, *, on_conflict: str = "keep-first") -> pd.DataFrame:
    """Each image's logits (plain and 8-view TTA) from the member that never saw it; cached in ``oof.csv``."""
    from .bundle import load_model
    from .data.ham10000 import load_dataset
    from .evaluate import dataset_logits

    path = out / "oof.csv"
    if path.exists():
        return pd.read_csv(path, dtype={"image_id": str, "lesion_id": str})
    ds = load_dataset(data, on_conflict=on_conflict)
    codes = ds.label_set.codes
    plain = np.zeros((len(ds), len(codes)))
    tta = np.zeros((len(ds), len(codes)))
    for i in range(int(folds.max()) + 1):
        net, cfg = load_model(out / f"fold{i}" / "best.safetensors")
        pos = np.flatnonzero(folds == i)
        plain[pos] = dataset_logits(net, cfg.prep, ds, pos, tta=False)
        tta[pos] = dataset_logits(net, cfg.prep, ds, pos, tta=True)
    table = pd.DataFrame({"image_id": ds.meta["image_id"], "lesion_id": ds.meta["lesion_id"], "label": ds.labels, "fold": folds})
    for j, c in enumerate(codes):
        table[f"logit_{c}"] = plain[:, j]
    for j, c in enumerate(codes):
        table[f"logit_tta_{c}"] = tta[:, j]
    atomic_write(path, lambda t: table.to_csv(t, index=False, float_format="%.7g"))
    return table


def oof_arrays(table: pd.DataFrame, tta: bool, codes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, folds) from an ``oof.csv`` table of a model with classes ``codes``."""
    cols = [f"logit_tta_{c}" if tta else f"logit_{c}" for c in codes]
    return table[cols].to_numpy(np.float64), table["label"].to_numpy(int), table["fold"].to_numpy(int)


def crossfit_probs(
    logits: np.ndarray, labels: np.ndarray, folds: np.ndarray, meta_x: np.ndarray | None = None, *, seed: int = 0
) -> np.ndarray:
    """The shipped post-hoc pipeline, cross-fitted: for each fold, the calibration (and, with ``meta_x``,
    the metadata fusion) fitted on the other folds' OOF predictions and applied to it."""
    from .posthoc import apply_metadata, calibrate, cross_fitted, fit_calibration, fit_metadata

    def fit_apply(tr, te):
        t, b = fit_calibration(logits[tr], labels[tr])
        p = calibrate(logits, t, b)
        if meta_x is None:
            return p[te]
        lp = np.log(np.clip(p, 1e-12, None))
        return apply_metadata(lp[te], meta_x[te], fit_metadata(lp[tr], meta_x[tr], labels[tr], seed=seed))

    return cross_fitted(fit_apply, len(labels), folds)


def metadata_ablation(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray, meta_x: np.ndarray, classes=None) -> dict:
    """Image only vs image + metadata, both cross-fitted over the CV folds on the OOF predictions."""
    from .metrics import classes_for, compute_metrics

    classes = classes_for(logits, classes)
    out = {}
    for name, mx in (("image", None), ("image+metadata", meta_x)):
        probs = crossfit_probs(logits, labels, folds, mx)
        m = compute_metrics(probs, labels, classes=classes)
        out[name] = {k: m[k] for k in ("accuracy", "balanced_accuracy", "auc_macro", "f1_weighted", "nll", "malignant_auc")}
        out[name]["recall"] = {c: m["per_class"][c]["recall"] for c in classes.codes}
    a, b = out["image"], out["image+metadata"]
    out["helps"] = bool(
        b["nll"] < a["nll"] and b["balanced_accuracy"] >= a["balanced_accuracy"] - 0.005 and b["accuracy"] >= a["accuracy"] - 0.005
    )
    return out


def assemble(out: str | Path, data, *, metadata: str = "auto", seed: int = 0, on_conflict: str = "keep-first") -> Path:
    """Fit everything post-hoc on the OOF predictions and write the ensemble bundle ``out/model``.

    ``metadata``: ``auto`` (use age, sex and site only where the cross-fitted ablation says they help),
    ``yes`` or ``no``. Writes ``oof_metrics.json``, the OOF report in ``oof_report/`` and ``model.safetensors/.json``.
    """
    from .bundle import Member, ModelConfig, load_model, save_bundle
    from .data.ham10000 import load_dataset
    from .evaluate import analysis_metrics, write_report
    from .metrics import class_calibration, compute_metrics
    from .posthoc import (
        apply_metadata,
        calibrate,
        cross_fitted,
        decide,
        encode_metadata,
        fit_calibration,
        fit_metadata,
        fit_rules,
        prediction_sets,
    )

    out = Path(out)
    ds = load_dataset(data, on_conflict=on_conflict)
    folds = pd.read_csv(out / "folds.csv", dtype={"image_id": str}).set_index("image_id").loc[ds.meta["image_id"], "fold"].to_numpy()
    k = int(folds.max()) + 1
    table = oof_logits(out, data, folds, on_conflict=on_conflict)
    if list(table["image_id"]) != list(ds.meta["image_id"]):
        raise SkinLesionError(f"{out / 'oof.csv'} does not match the images of {data}; delete it to recompute.")
    labels = table["label"].to_numpy(int)
    classes = ds.label_set

    # TTA: kept when it lowers the calibrated OOF negative log-likelihood
    choice = {}
    for tta in (False, True):
        lg, _, _ = oof_arrays(table, tta, classes.codes)
        t, b = fit_calibration(lg, labels)
        p = calibrate(lg, t, b)
        choice[tta] = (float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)))), lg, t, b)
    tta = choice[True][0] < choice[False][0]
    _, logits, temperature, bias = choice[tta]
    probs = calibrate(logits, temperature, bias)
    uncalibrated = compute_metrics(calibrate(logits), labels, classes=classes)

    meta_x = encode_metadata(ds.meta)
    ablation = metadata_ablation(logits, labels, folds, meta_x, classes)
    use_meta = ablation["helps"] if metadata == "auto" else metadata == "yes"
    aux: dict = {}
    if use_meta:
        lp = np.log(np.clip(probs, 1e-12, None))
        aux.update(fit_metadata(lp, meta_x, labels, seed=seed))
        probs = apply_metadata(lp, meta_x, aux)

    crossed = crossfit_probs(logits, labels, folds, meta_x if use_meta else None, seed=seed)
    cv_config = json.loads((out / "cv_config.json").read_text())
    rules, rule_aux = fit_rules(crossed, labels, rule=cv_config.get("decision_rule", "most-probable"), classes=classes)
    aux.update(rule_aux)

    # conformal coverage, honestly: calibration scores from the other folds only
    def sets_for(tr, te):
        from .posthoc import fit_conformal

        return prediction_sets(crossed[te], fit_conformal(crossed[tr], labels[tr]), rules["conformal"]["confidence"])

    from .metrics import conformal_metrics

    rules["conformal"]["cross_fitted"] = conformal_metrics(cross_fitted(sets_for, len(labels), folds), labels, classes)

    nets, members = [], []
    for i in range(k):
        net, mcfg = load_model(out / f"fold{i}" / "best.safetensors")
        nets.append(net.members[0])
        members.append(
            Member(mcfg.members[0].backbone, mcfg.members[0].pretrained, fold=i, seed=(mcfg.train or {}).get("seed"), metrics=mcfg.metrics)
        )
    prep = mcfg.prep
    # OOD score and photo quality on the first member: fitted on its training images, thresholds on its held-out fold
    check_tensors, ood_cfg, quality_cfg = _image_checks(nets[0], prep, ds, folds)
    aux.update(check_tensors)

    cfg = ModelConfig(
        preprocess=prep.to_dict(),
        members=members,
        name=f"skinlesion {k}-fold ensemble",
        label_set=classes.name,
        classes=list(classes.codes),
        temperature=temperature,
        class_bias=bias,
        tta=tta,
        low_res=mcfg.low_res,
        ood=ood_cfg,
        quality=quality_cfg,
        metadata={
            "fields": list(("age", "sex", "localization")),
            "encoding": "skinlesion.posthoc.encode_metadata",
            "model": "multinomial logistic regression on calibrated image log-probabilities + metadata, metadata dropout 0.3",
        }
        if use_meta
        else None,
        train=cv_config,
        **rules,
    )
    final_aux = dict(aux)
    metrics = compute_metrics(probs, labels, decide(probs, cfg.decision), classes)
    metrics.update(analysis_metrics(probs, labels, cfg, final_aux))
    crossed_m = compute_metrics(crossed, labels, decide(crossed, cfg.decision), classes)
    metrics["cross_fitted"] = {kk: crossed_m[kk] for kk in ("accuracy", "balanced_accuracy", "auc_macro", "f1_weighted", "nll")}
    metrics["cross_fitted"].update(
        {kk: v for kk, v in analysis_metrics(crossed, labels, cfg, final_aux).items() if kk != "class_calibration"}
    )
    metrics["cross_fitted"]["conformal"] = rules["conformal"]["cross_fitted"]
    from .skintone import dataset_itas, training_distribution

    itas = dataset_itas(ds, np.arange(len(ds)), prep)  # every image trained some member: all are training images
    metrics["skin_tone"] = training_distribution(ds, np.arange(len(ds)), prep, itas=itas)
    metrics["subgroups"] = oof_subgroups(probs, labels, ds, cfg, itas)
    metrics.update(
        {
            "evaluated_on": "out-of-fold",
            "n_folds": k,
            "tta": tta,
            "temperature": temperature,
            "ece_uncalibrated": uncalibrated["ece"],
            "class_calibration_uncalibrated": class_calibration(calibrate(logits), labels, classes),
            "metadata_ablation": ablation,
            "metadata": use_meta,
            "tta_nll": {"off": choice[False][0], "on": choice[True][0]},
        }
    )
    cfg.metrics = {
        kk: metrics[kk]
        for kk in (
            "evaluated_on",
            "n_images",
            "accuracy",
            "balanced_accuracy",
            "auc_macro",
            "f1_weighted",
            "f1_macro",
            "malignant_auc",
            "ece",
            "ece_uncalibrated",
            "nll",
            "tta",
            "metadata",
            "metadata_ablation",
            "cross_fitted",
            "subgroups",
            "skin_tone",
        )
    }
    write_report(
        {**metrics, "model": str(out / "model"), "data": str(data), "subset": "out-of-fold"},
        probs,
        labels,
        out / "oof_report",
        ids=ds.meta["image_id"].to_numpy(),
    )
    atomic_text(out / "oof_metrics.json", json.dumps(metrics, indent=2, default=float))
    # the OOF logits travel with the bundle, so its card's numbers can be recomputed from it
    final_aux["oof.logits"] = logits.astype(np.float64)  # exactly the numbers the metrics came from
    final_aux["oof.labels"] = labels.astype(np.int64)
    final_aux["oof.folds"] = folds.astype(np.int64)
    final_aux["oof.meta"] = meta_x.astype(np.float32)
    return save_bundle(nets, cfg, out / "model", extra=final_aux)


def _image_checks(member, prep, ds, folds: np.ndarray):
    """The OOD score and quality check of an ensemble, on its first member (the one whose features the predictor reads)."""
    from .finish import fit_image_checks

    tensors, ood_cfg, quality_cfg = fit_image_checks(member, prep, ds, np.flatnonzero(folds != 0), np.flatnonzero(folds == 0))
    if ood_cfg:
        ood_cfg["stages"] = [f"members.0.{s}" for s in ood_cfg["stages"]]
    if quality_cfg:
        quality_cfg["stages"] = [f"members.0.{s}" for s in quality_cfg["stages"]]
    return tensors, ood_cfg, quality_cfg


def oof_subgroups(probs: np.ndarray, labels: np.ndarray, ds, cfg, itas=None) -> dict:
    """Subgroup metrics (age band, sex, body site; ITA band where ``itas``, each image's skin ITA, is given)
    of the OOF predictions, lesion-clustered bootstrap."""
    from .metrics import subgroup_metrics
    from .posthoc import decide
    from .skintone import bands_of

    meta = ds.meta if itas is None else ds.meta.assign(skin_tone=bands_of(itas))
    return subgroup_metrics(
        probs,
        labels,
        meta,
        pred=decide(probs, cfg.decision),
        malignant_threshold=(cfg.tier or {}).get("malignant_threshold"),
        groups=ds.meta["lesion_id"].to_numpy(),
        malignant_mask=cfg.labels.malignant_mask,
    )


def store_skin_tone(model: str | Path, data) -> Path:
    """Measure the skin tone (ITA) of a bundle's training images and store it in the bundle's config, its tensors
    untouched: ``metrics.skin_tone`` (band counts, range) and, for a cross-validated ensemble, the OOF subgroup
    metrics with the ITA band beside age, sex and site. ``data``: the dataset it was trained on (an ensemble:
    all of it; a single run: the training rows of its split)."""
    from .bundle import load_config, read_tensors, resolve_model_path, update_config
    from .card import oof_probabilities
    from .data.ham10000 import load_dataset
    from .skintone import dataset_itas, training_distribution

    path = resolve_model_path(model)
    cfg = load_config(path, check_backbones=False)
    ds = load_dataset(data)
    aux = {k: v for k, v in read_tensors(path).items() if not k.startswith("members.")}  # OOF logits, fusion, rules
    metrics = dict(cfg.metrics or {})
    if "oof.labels" in aux:
        labels = np.asarray(aux["oof.labels"]).astype(int)
        if not np.array_equal(labels, ds.labels):
            raise SkinLesionError(f"{data} is not the dataset {path.name} was cross-validated on (labels differ).")
        itas = dataset_itas(ds, np.arange(len(ds)), cfg.prep)
        metrics["skin_tone"] = training_distribution(ds, np.arange(len(ds)), cfg.prep, itas=itas)
        metrics["subgroups"] = oof_subgroups(oof_probabilities(cfg, aux), labels, ds, cfg, itas)
    else:
        train_rows = _training_rows(cfg, ds)
        metrics["skin_tone"] = training_distribution(ds, train_rows, cfg.prep)
    update_config(path, metrics=metrics)
    return path


def _training_rows(cfg, ds) -> np.ndarray:
    """A single run's training rows: those of its split manifest marked train (all rows without one)."""
    split = (cfg.train or {}).get("split")
    if split and Path(split).exists():
        man = pd.read_csv(split, dtype={"image_id": str})
        train_ids = set(man.loc[man["split"] == "train", "image_id"])
        return np.flatnonzero(ds.meta["image_id"].isin(train_ids).to_numpy())
    if "split" in ds.meta.columns:
        return np.flatnonzero((ds.meta["split"] == "train").to_numpy())
    return np.arange(len(ds))


def refit(model: str | Path, data, *, parts=("decision", "checks", "subgroups")) -> Path:
    """Refit an assembled ensemble's post-hoc parts in place, from its own members and stored OOF predictions.

    ``decision``: the decision rules on the cross-fitted OOF probabilities; ``checks``: the OOD score and the
    photo-quality check on the first member (its training folds, thresholds on its held-out fold);
    ``subgroups``: the OOF subgroup metrics the card shows (with the ITA band). The members, calibration, fusion and the
    other rules are kept. Writes the bundle in the precision it has.
    """
    from .card import oof_probabilities
    from safetensors import safe_open

    from .bundle import load_model, resolve_model_path, save_bundle
    from .data.ham10000 import load_dataset
    from .posthoc import fit_decision

    path = resolve_model_path(model)
    net, cfg, aux = load_model(path, with_extra=True)
    if "oof.logits" not in aux:
        raise SkinLesionError(f"{path.name} holds no out-of-fold predictions; it is not a cross-validated ensemble.")
    ds = load_dataset(data, on_conflict=(cfg.train or {}).get("on_conflict", "keep-first"))
    labels = np.asarray(aux["oof.labels"]).astype(int)
    if not np.array_equal(labels, ds.labels):
        raise SkinLesionError(f"{data} is not the dataset {path.name} was cross-validated on (labels differ).")
    folds = np.asarray(aux["oof.folds"]).astype(int)
    if "decision" in parts:
        meta = np.asarray(aux["oof.meta"], np.float64) if cfg.metadata and "meta.coef" in aux else None
        crossed = crossfit_probs(np.asarray(aux["oof.logits"], np.float64), labels, folds, meta)
        cfg.decision = fit_decision(crossed, labels, default=(cfg.train or {}).get("decision_rule", "most-probable"))
    if "checks" in parts:
        first = next(i for i, m in enumerate(cfg.members) if m.fold == 0)
        aux = {k: v for k, v in aux.items() if not k.startswith(("ood.", "quality."))}
        tensors, cfg.ood, cfg.quality = _image_checks(net.members[first], cfg.prep, ds, folds)
        aux.update(tensors)
    if "subgroups" in parts:
        from .skintone import dataset_itas

        itas = dataset_itas(ds, np.arange(len(ds)), cfg.prep)
        cfg.metrics = {**cfg.metrics, "subgroups": oof_subgroups(oof_probabilities(cfg, aux), labels, ds, cfg, itas)}
    with safe_open(str(path), framework="numpy") as f:  # re-save the members in the precision they were shipped in
        half = f.get_tensor(next(k for k in f.keys() if k.startswith("members."))).dtype == np.float16
    return save_bundle(net, cfg, path, half=half, extra=aux)


def train_cv(cfg, k: int, *, metadata: str = "auto") -> Path:
    """Train ``k`` members, predict out of fold, and assemble the ensemble bundle in ``cfg.out``."""
    out, _ = train_members(cfg, k)
    return assemble(out, cfg.data, metadata=metadata, seed=cfg.seed, on_conflict=cfg.on_conflict)


def refresh_oof(model: str | Path, data) -> Path:
    """Recompute a shipped ensemble's stored OOF logits with its own (e.g. fp16) members, and its metrics from them.

    After :func:`skinlesion.bundle.copy_bundle` to fp16, the stored OOF logits are those of the
    fp32 members; this makes them (and the card's numbers) exactly the installed model's. The
    calibration and rules are kept as fitted at assembly.
    """
    from .bundle import load_model, resolve_model_path, save_bundle
    from .card import oof_metrics
    from .data.ham10000 import load_dataset
    from .evaluate import dataset_logits

    path = resolve_model_path(model)
    net, cfg, aux = load_model(path, with_extra=True)
    if "oof.logits" not in aux:
        raise SkinLesionError(f"{path.name} holds no out-of-fold predictions; it is not a cross-validated ensemble.")
    ds = load_dataset(data, on_conflict=(cfg.train or {}).get("on_conflict", "keep-first"))
    if not np.array_equal(np.asarray(aux["oof.labels"]).astype(int), ds.labels):
        raise SkinLesionError(f"{data} is not the dataset {path.name} was cross-validated on (labels differ).")
    folds = np.asarray(aux["oof.folds"]).astype(int)
    logits = np.zeros_like(np.asarray(aux["oof.logits"], np.float64))
    for i, member in enumerate(cfg.members):
        pos = np.flatnonzero(folds == member.fold)
        logits[pos] = dataset_logits(net.members[i], cfg.prep, ds, pos, tta=cfg.tta)
    aux["oof.logits"] = logits
    m = oof_metrics(cfg, aux)
    cfg.metrics = {
        **cfg.metrics,
        **{k: m[k] for k in ("accuracy", "balanced_accuracy", "auc_macro", "f1_weighted", "f1_macro", "malignant_auc", "ece", "nll")},
    }
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:  # re-save the members in the precision they were shipped in
        first = next(k for k in f.keys() if k.startswith("members."))
        half = f.get_tensor(first).dtype == np.float16
    return save_bundle(net, cfg, path, half=half, extra=aux)
