"""DermaMNIST benchmark: official image-level split vs a lesion-grouped split of the same images.

Trains the project's CPU recipe (tf_efficientnet_lite0, ImageNet weights from the offline
package, 28 px images upsampled to 64 px) twice with the project's own code:

1. on the official DermaMNIST train split, selecting on the official val split
   (comparable with the MedMNIST literature, but 348 of the 1,003 val images have a
   sibling image of the same lesion in train);
2. on a lesion-grouped split (70/10/20) of the same 8,010 images, reporting its test set.

Prints the val metrics beside the published anchors (which are on the official *test*
split, not available here) and the gap between the two splits.

    python benchmarks/dermamnist.py [--data ../shared/data/dermamnist28] [--out runs/bench] [--epochs 12] [--quick]
        [--official-run RUN]   # reuse a finished run of the same recipe on the official split (the shipped model's)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ANCHORS = [
    ("MedMNIST v2 ResNet-18 (28)", 0.735, 0.917),
    ("Google AutoML Vision", 0.768, 0.914),
    ("MedMNIST+ best at 28 px (VGG16)", 0.766, None),
]


def run(data: Path, out: Path, kind: str, epochs: int, quick: bool, reuse: Path | None = None) -> dict:
    from skinlesion.data import load_dataset, make_split
    from skinlesion.evaluate import evaluate_model
    from skinlesion.train import TrainConfig, train

    ds = load_dataset(data)
    meta = ds.meta
    if quick:  # smoke mode: a few hundred images, one epoch
        meta = meta.groupby("dx", group_keys=False).apply(lambda g: g.head(40)).reset_index(drop=True)
    rep = make_split(meta, kind=kind)
    out.mkdir(parents=True, exist_ok=True)
    rep.manifest.to_csv(out / "split.csv", index=False)
    t0 = time.time()
    if reuse is not None:
        m = evaluate_model(reuse, data, out / "eval_val", split=reuse / "split.csv", subset="val")
        return {
            "kind": kind,
            "subset": "val",
            "minutes": float("nan"),
            "leaked": rep.leaked_val_images,
            **{k: m[k] for k in ("n_images", "accuracy", "balanced_accuracy", "auc_macro", "f1_weighted", "ece")},
        }
    train(
        TrainConfig(
            data=str(data),
            split=str(out / "split.csv"),
            out=str(out / "run"),
            backbone="tf_efficientnet_lite0",
            pretrained=True,
            input_size=64,
            epochs=1 if quick else epochs,
            patience=5,
            batch_size=64,
            lr=1e-3,
            weight_decay=0.02,
            progress=False,
        )
    )
    minutes = (time.time() - t0) / 60
    subset = "val" if kind == "official" else "test"
    m = evaluate_model(out / "run", data, out / f"eval_{subset}", split=out / "split.csv", subset=subset)
    return {
        "kind": kind,
        "subset": subset,
        "minutes": minutes,
        "leaked": rep.leaked_val_images if kind == "official" else rep.leaked_test_images,
        **{k: m[k] for k in ("n_images", "accuracy", "balanced_accuracy", "auc_macro", "f1_weighted", "ece")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dermamnist28"))
    ap.add_argument("--out", default="runs/bench_dermamnist")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="smoke mode: tiny subset, one epoch")
    ap.add_argument("--official-run", default=None, help="reuse this finished official-split run instead of training it")
    args = ap.parse_args()
    out = Path(args.out)
    reuse = Path(args.official_run) if args.official_run else None
    results = [
        run(Path(args.data), out / "official", "official", args.epochs, args.quick, reuse),
        run(Path(args.data), out / "lesion", "lesion", args.epochs, args.quick),
    ]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'setting':<44} {'ACC':>6} {'bal.ACC':>8} {'AUC':>6} {'n':>6} {'min':>6}")
    for r in results:
        name = f"skinlesion, {r['kind']} split, {r['subset']} ({r['leaked']} leaked imgs)"
        print(f"{name:<44} {r['accuracy']:6.3f} {r['balanced_accuracy']:8.3f} {r['auc_macro']:6.3f} {r['n_images']:6d} {r['minutes']:6.1f}")
    for name, acc, auc in ANCHORS:
        print(f"{name + ' (official test)':<44} {acc:6.3f} {'':>8} {auc if auc else float('nan'):6.3f}")
    gap = results[0]["accuracy"] - results[1]["accuracy"]
    print(f"\naccuracy gap, official (leaky) val minus lesion-grouped test: {gap:+.3f}")


if __name__ == "__main__":
    main()
