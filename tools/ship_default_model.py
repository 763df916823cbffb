"""Train (or take) the cross-validated ensemble, store it in the package, and write MODEL_CARD.md.

    python tools/ship_default_model.py                   # train the CPU recipe, ship it, write the card
    python tools/ship_default_model.py --run runs/cv5    # ship an already assembled ensemble run

Nothing here writes a model's JSON: the bundle is copied (fp16) by skinlesion.bundle and the
card is generated from the shipped bundle by `skinlesion card`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "dermamnist28"
# the CPU recipe (2 cores, about 80 minutes): see benchmarks/RESULTS.md
RECIPE = [
    "--folds",
    "5",
    "--backbone",
    "tf_efficientnet_lite0",
    "--pretrained",
    "--input-size",
    "64",
    "--epochs",
    "10",
    "--patience",
    "4",
    "--batch-size",
    "64",
    "--lr",
    "1e-3",
    "--weight-decay",
    "0.02",
    "--balance",
    "sqrt",
    "--seed",
    "42",
    "--no-progress",
]


def sh(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--run", default=None, help="an assembled ensemble run (holding model.safetensors) to ship")
    ap.add_argument("--out", default="runs/cv5")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "skinlesion.cli"]
    run = Path(args.run or args.out)
    if args.run is None:
        sh(*cli, "train", args.data, "--out", str(run), *RECIPE)
    from skinlesion.bundle import copy_bundle

    dest = REPO / "src" / "skinlesion" / "weights" / "default"
    from skinlesion.cv import refresh_oof

    path = copy_bundle(run / "model.safetensors", dest, half=True)
    refresh_oof(path, args.data)  # the stored OOF logits (and the card's numbers) of the fp16 members as installed
    print(f"shipped {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    sh(sys.executable, str(REPO / "benchmarks" / "robustness.py"), "--model", "default", "--data", args.data, "--store")
    sh(sys.executable, str(REPO / "tools" / "store_skin_tone.py"), "--model", "default", "--data", args.data)
    sh(*cli, "card", "default", "--out", str(REPO / "MODEL_CARD.md"))
    sh(*cli, "export", "default")


if __name__ == "__main__":
    main()
