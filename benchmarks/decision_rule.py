"""What balanced accuracy can a different decision rule buy, and at what cost in accuracy?

    python benchmarks/decision_rule.py [--model default]

The shipped top class is the argmax of the *calibrated* probabilities: the most probable
diagnosis, which maximises expected accuracy. Dividing the probabilities by the class
priors raised to ``alpha`` before the argmax shifts answers towards the rare classes:
``alpha = 1`` is the rule that maximises expected balanced accuracy (every class weighted
equally). The probabilities themselves do not change, only which class is named first.

Computed on the bundle's stored out-of-fold predictions through the cross-fitted post-hoc
pipeline (calibration and metadata fusion fitted on the other folds: no row is used to
fit what is applied to it), for alpha in 0, 0.25, ..., 1.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def table(model: str = "default", alphas=(0.0, 0.25, 0.5, 0.75, 1.0)) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from skinlesion.bundle import load_config, read_tensors, resolve_model_path
    from skinlesion.cv import crossfit_probs

    path = resolve_model_path(model)
    cfg = load_config(path, check_backbones=False)
    aux = read_tensors(path)
    if "oof.logits" not in aux:
        raise SystemExit(f"{path.name} holds no out-of-fold predictions; pass a cross-validated ensemble.")
    logits = np.asarray(aux["oof.logits"], np.float64)
    labels = np.asarray(aux["oof.labels"]).astype(int)
    folds = np.asarray(aux["oof.folds"]).astype(int)
    meta = np.asarray(aux["oof.meta"], np.float64) if cfg.metadata else None
    probs = crossfit_probs(logits, labels, folds, meta)
    prior = np.bincount(labels, minlength=probs.shape[1]) / len(labels)
    rows = []
    for a in alphas:
        pred = (np.log(np.clip(probs, 1e-12, None)) - a * np.log(prior)).argmax(1)
        rows.append(
            {
                "alpha": float(a),
                "accuracy": float((pred == labels).mean()),
                "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
                "f1_weighted": float(f1_score(labels, pred, average="weighted")),
            }
        )
    return {"model": str(path), "images": int(len(labels)), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    res = table(args.model)
    print(f"{res['images']} out-of-fold predictions, cross-fitted post-hoc pipeline")
    print("| alpha (prior exponent) | accuracy | balanced accuracy | weighted F1 |\n| --- | --- | --- | --- |")
    for r in res["rows"]:
        print(f"| {r['alpha']:.2f} | {r['accuracy']:.4f} | {r['balanced_accuracy']:.4f} | {r['f1_weighted']:.4f} |")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
