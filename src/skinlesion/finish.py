"""The post-training step of a single run: TTA choice, calibration, analysis rules, OOD and quality fits on its val set.

``skinlesion train`` calls :func:`finish_run` on the best model when training ends; a
cross-validated ensemble does the same on its out-of-fold predictions instead
(:func:`skinlesion.cv.assemble`). Both fit the rules of :mod:`skinlesion.posthoc` and the two
image checks of :func:`fit_image_checks` (is it dermoscopy; is it a good photo).
"""

from __future__ import annotations


def fit_image_checks(net, prep, ds, train_positions, val_positions, val_features=None) -> tuple[dict, dict | None, dict | None]:
    """The OOD score (:mod:`skinlesion.ood`) and the photo-quality check (:mod:`skinlesion.quality`) of one network:
    fitted on (a sample of) its training images, thresholds on its held-out ones. Returns (tensors, ood config, quality config).

    The clean images' pooled stage features are computed once and shared: the quality check's
    training images are the first of the OOD fit's sample, and where the check sees the model's own
    input, their features are the same numbers. ``val_features``: those of ``val_positions``,
    already computed (by :func:`finish_run`'s plain val pass)."""
    import numpy as np

    from .ood import dataset_features, fit_for_model, sample_train, stages
    from .quality import MAX_TRAIN
    from .quality import fit as fit_quality

    names = stages(net)
    va = np.asarray(val_positions)
    if not names:
        tensors, ood_cfg, plain = {}, None, None
    else:
        tr = sample_train(train_positions)
        va_f = val_features if val_features is not None else dataset_features(net, prep, ds, va, names)
        plain = (tr, dataset_features(net, prep, ds, tr, names), va_f)
        tensors, ood_cfg = fit_for_model(net, prep, ds, train_positions, va, plain=plain)
    use_net = bool(names) and bool(prep.source_size) and prep.source_size <= 128  # the check sees the model's own input
    if use_net:
        q_tr, clean = plain[0][:MAX_TRAIN], (plain[1][:MAX_TRAIN], plain[2])
    else:
        q_tr, clean = sample_train(train_positions, MAX_TRAIN), None
    q_tensors, q_cfg = fit_quality(net, prep, ds, q_tr, va, names if use_net else [], clean_features=clean)
    if q_cfg:
        q_cfg["uses_network_features"] = use_net
    return {**(tensors or {}), **q_tensors}, ood_cfg, q_cfg


def finish_run(out, ds, train_positions, val_positions) -> dict:
    """For the best model: fit calibration, TTA choice, the analysis rules and the OOD score on val; store them,
    with the training images' skin tone (:func:`skinlesion.skintone.training_distribution`).

    The same post-hoc steps as an ensemble's (:mod:`skinlesion.posthoc`), fitted on this run's val set.
    """
    import json
    from dataclasses import replace
    from pathlib import Path

    import numpy as np

    from .bundle import load_model, save_bundle
    from .calibration import ece
    from .errors import atomic_text
    from .evaluate import analysis_metrics, dataset_outputs
    from .metrics import compute_metrics
    from .ood import stages
    from .posthoc import calibrate, decide, fit_calibration, fit_rules
    from .preprocess import tta_logits
    from .skintone import training_distribution

    out = Path(out)
    net, mcfg = load_model(out / "best.safetensors")
    labels = ds.labels[val_positions]
    candidates = {}
    names = stages(net)
    # one pass over val: each TTA view's logits (the plain view first) and the plain view's features,
    # which are the image checks' val rows
    per_view, f = dataset_outputs(net, mcfg.prep, ds, val_positions, tta=True, views=True, stages=names)
    val_features = f if names else None
    for tta in (False, True):  # keep TTA only if it lowers the calibrated val NLL
        lg = tta_logits(per_view).astype(np.float32) if tta else per_view[0]
        t_, b_ = fit_calibration(lg, labels)
        candidates[tta] = (compute_metrics(calibrate(lg, t_, b_), labels, classes=mcfg.labels)["nll"], lg, t_, b_)
    tta = candidates[True][0] < candidates[False][0]
    _, logits, t, bias = candidates[tta]
    before = ece(calibrate(logits), labels)
    probs = calibrate(logits, t, bias)
    rule = json.loads((out / "config.json").read_text()).get("decision_rule", "most-probable") if (out / "config.json").exists() else None
    rules, aux = fit_rules(probs, labels, source="val (in-sample)", rule=rule or "most-probable", classes=mcfg.labels)
    check_tensors, ood_cfg, quality_cfg = fit_image_checks(net, mcfg.prep, ds, train_positions, val_positions, val_features)
    aux.update(check_tensors)
    mcfg = replace(mcfg, temperature=t, class_bias=bias, tta=tta, ood=ood_cfg, quality=quality_cfg, **rules)
    metrics = compute_metrics(probs, labels, decide(probs, mcfg.decision), mcfg.labels)
    metrics.update(analysis_metrics(probs, labels, mcfg, aux))
    metrics.update({"temperature": t, "class_bias": bias, "ece_uncalibrated": before, "subset": "val", "tta": tta})
    mcfg.metrics = {
        **mcfg.metrics,
        **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "auc_macro", "ece")},
        "ece_uncalibrated": before,
        "skin_tone": training_distribution(ds, train_positions, mcfg.prep),  # the range an upload's skin is checked against
    }
    save_bundle(net, mcfg, out / "best", extra=aux)
    atomic_text(out / "val_metrics.json", json.dumps(metrics, indent=2, default=float))
    print(
        f"temperature {t:.3f} + class bias: val ECE {before:.4f} -> {metrics['ece']:.4f}; "
        f"val accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}, "
        f"macro AUC {metrics['auc_macro']:.4f} (TTA {'on' if tta else 'off'}, chosen on val)"
    )
    return metrics
