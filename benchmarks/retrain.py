"""Retrained ensembles against the shipped one, on the same folds' out-of-fold predictions.

    python benchmarks/retrain.py RUN [RUN ...] [--model default] [--data ../shared/data/dermamnist28] [--blend] [--json F]

Each RUN is a ``skinlesion train --folds 5`` folder trained on the shipped model's folds (checked
against the bundle's stored ``oof.folds``). For every member of RUN that has finished (``fold{i}/
best.safetensors``), its held-out fold is predicted (with the shipped model's TTA setting); the
shipped ensemble's stored OOF logits give the baseline on exactly the same images. Both then go
through the shipped post-hoc pipeline cross-fitted over the finished folds (calibration with
prior correction and the metadata fusion fitted on the other finished folds; the balanced rule's
exponent chosen on the other folds): :func:`benchmarks.frontier.score`. With fewer than five
finished members the table says on how many folds and images it stands. ``--blend`` adds, for each
RUN, the ensemble of the shipped members and RUN's (the log of their mean probability, as a bundle's
ensemble combines members): what a second seed or recipe adds as diversity.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def member_logits(run: Path, ds, folds: np.ndarray, tta: bool) -> tuple[np.ndarray, list[int]]:
    """(logits of every image whose fold's member has finished, NaN elsewhere; the finished folds)."""
    from skinlesion.bundle import load_model
    from skinlesion.evaluate import dataset_logits

    cache = run / "retrain_oof.npz"
    saved = dict(np.load(cache)) if cache.exists() else {}
    out = np.full((len(folds), len(ds.label_set)), np.nan)
    done = []
    for i in range(int(folds.max()) + 1):
        best = run / f"fold{i}" / "best.safetensors"
        finished = (run / f"fold{i}" / "MEMBER_DONE").exists()
        if not finished:
            continue
        pos = np.flatnonzero(folds == i)
        if f"fold{i}" not in saved:
            net, cfg = load_model(best)
            saved[f"fold{i}"] = dataset_logits(net, cfg.prep, ds, pos, tta=tta)
            np.savez(cache, **saved)
        out[pos] = saved[f"fold{i}"]
        done.append(i)
    return out, done


def blend(*logits: np.ndarray) -> np.ndarray:
    """Ensembles' logits combined as one ensemble of all their members: the log of the mean probability."""
    from scipy.special import log_softmax, logsumexp

    return logsumexp(np.stack([log_softmax(lg, axis=1) for lg in logits]), axis=0) - np.log(len(logits))


def main(argv=None) -> dict:
    from frontier import score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "dermamnist28"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--blend", action="store_true", help="also score each RUN ensembled with the shipped members")
    args = ap.parse_args(argv)
    import pandas as pd

    from skinlesion.bundle import load_config, read_tensors, resolve_model_path
    from skinlesion.data import load_dataset

    t0 = time.time()
    path = resolve_model_path(args.model)
    aux, cfg = read_tensors(path), load_config(path)
    labels, folds = np.asarray(aux["oof.labels"]).astype(int), np.asarray(aux["oof.folds"]).astype(int)
    meta = np.asarray(aux["oof.meta"], np.float64) if cfg.metadata else None
    shipped = np.asarray(aux["oof.logits"], np.float64)
    ds = load_dataset(args.data)
    rows, res = [], {"model": str(path), "rows": []}
    for run in map(Path, args.runs):
        saved = pd.read_csv(run / "folds.csv", dtype={"image_id": str}).set_index("image_id").loc[ds.meta["image_id"], "fold"]
        if not np.array_equal(saved.to_numpy(int), folds):
            raise SystemExit(f"{run} was not trained on the shipped model's folds; rerun it with the same data and --seed.")
        logits, done = member_logits(run, ds, folds, cfg.tta)
        rows.append((run, logits, done))
    common = sorted(set.intersection(*(set(d) for _, _, d in rows)))
    if not common:
        raise SystemExit("no fold has a finished member in every run yet")
    sel = np.isin(folds, common)
    print(f"folds {common} ({int(sel.sum())} images), cross-fitted over them; {time.time() - t0:.0f} s")
    print(
        "| model | accuracy | balanced accuracy | macro AUC | NLL | mel recall | balanced rule: accuracy | balanced accuracy | mel recall |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    m = meta[sel] if meta is not None else None
    models = [("shipped members", shipped)] + [(str(r), lg) for r, lg, _ in rows]
    if args.blend:
        models += [(f"shipped + {r}", blend(shipped, lg)) for r, lg, _ in rows]
    for name, lg in models:
        s = score(lg[sel], labels[sel], folds[sel], m) if len(common) > 1 else None
        if s is None:
            raise SystemExit("cross-fitting needs at least two finished folds in every run")
        res["rows"].append({"model": name, "folds": common, "images": int(sel.sum()), **s})
        a, b = s["most_probable"], s["balanced"]
        print(
            f"| {name} | {a['accuracy']:.4f} | {a['balanced_accuracy']:.4f} | {a['auc_macro']:.4f} | {a['nll']:.4f} | "
            f"{a['mel_recall']:.3f} | {b['accuracy']:.4f} | {b['balanced_accuracy']:.4f} | {b['mel_recall']:.3f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
