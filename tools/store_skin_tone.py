"""Store the training images' skin tone (ITA) in an existing bundle, without retraining.

    python tools/store_skin_tone.py --model default --data ../shared/data/dermamnist28

Writes ``metrics.skin_tone`` (band counts, the 1st-99th percentile range an upload is checked against)
and, for a cross-validated ensemble, its OOF subgroup metrics with the ITA band, into the bundle's
JSON (atomically, through skinlesion.bundle.update_config; the tensors are untouched). New runs
store it themselves (skinlesion.finish, skinlesion.cv.assemble).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "dermamnist28"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(DATA), help="the dataset the model was trained on")
    args = ap.parse_args(argv)
    from skinlesion.bundle import load_config
    from skinlesion.cv import store_skin_tone
    from skinlesion.skintone import distribution_lines

    t0 = time.perf_counter()
    path = store_skin_tone(args.model, args.data)
    print("\n".join(distribution_lines(load_config(path, check_backbones=False).metrics.get("skin_tone"))))
    print(f"stored in {path.with_suffix('.json')} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
