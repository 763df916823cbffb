"""The post-training step of a single run: TTA choice, calibration, analysis rules and OOD fit on its val set.

``skinlesion train`` calls :func:`finish_run` on the best model when training ends; a
cross-validated ensemble does the same on its out-of-fold predictions instead
(:func:`skinlesion.cv.assemble`). Both fit the rules of :mod:`skinlesion.posthoc`.
"""

from __future__ import annotations


def finish_run(out, ds, train_positions, val_positions) -> dict:
    """For the best model: fit calibration, TTA choice, the analysis rules and the OOD score on val; store them.

    The same post-hoc steps as an ensemble's (:mod:`skinlesion.posthoc`), fitted on this run's val set.
    """
    import json
    from dataclasses import replace
    from pathlib import Path

    from .bundle import load_model, save_bundle
    from .calibration import ece
    from .errors import atomic_text
    from .evaluate import analysis_metrics, dataset_logits
    from .metrics import compute_metrics
    from .ood import fit_for_model
    from .posthoc import calibrate, fit_calibration, fit_rules

    out = Path(out)
    net, mcfg = load_model(out / "best.safetensors")
    labels = ds.labels[val_positions]
    candidates = {}
    for tta in (False, True):  # keep TTA only if it lowers the calibrated val NLL
        lg = dataset_logits(net, mcfg.prep, ds, val_positions, tta=tta)
        t_, b_ = fit_calibration(lg, labels)
        candidates[tta] = (compute_metrics(calibrate(lg, t_, b_), labels)["nll"], lg, t_, b_)
    tta = candidates[True][0] < candidates[False][0]
    _, logits, t, bias = candidates[tta]
    before = ece(calibrate(logits), labels)
    probs = calibrate(logits, t, bias)
    rules, aux = fit_rules(probs, labels, source="val (in-sample)")
    ood_tensors, ood_cfg = fit_for_model(net, mcfg.prep, ds, train_positions, val_positions)
    aux.update(ood_tensors or {})
    mcfg = replace(mcfg, temperature=t, class_bias=bias, tta=tta, ood=ood_cfg, **rules)
    metrics = compute_metrics(probs, labels)
    metrics.update(analysis_metrics(probs, labels, mcfg, aux))
    metrics.update({"temperature": t, "class_bias": bias, "ece_uncalibrated": before, "subset": "val", "tta": tta})
    mcfg.metrics = {
        **mcfg.metrics,
        **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "auc_macro", "ece")},
        "ece_uncalibrated": before,
    }
    save_bundle(net, mcfg, out / "best", extra=aux)
    atomic_text(out / "val_metrics.json", json.dumps(metrics, indent=2, default=float))
    print(
        f"temperature {t:.3f} + class bias: val ECE {before:.4f} -> {metrics['ece']:.4f}; "
        f"val accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}, "
        f"macro AUC {metrics['auc_macro']:.4f} (TTA {'on' if tta else 'off'}, chosen on val)"
    )
    return metrics
