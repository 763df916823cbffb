"""Could a global-contrast gate catch the low-contrast images the OOD score misses?

    python benchmarks/contrast_gate.py --data ../shared/data/dermamnist28 [--n 1500]

The robustness benchmark shows the feature-space OOD score flags few low-contrast images
(severity 3: contrast x0.55), where melanoma recall falls. The simplest extra check is a
gate on the image's own contrast: refer when the RMS luminance contrast of the source
image is below the ``--percentile`` (default 2.5) of real images, i.e. the same false-alarm
rate as the OOD score. This prints, per severity of the robustness benchmark's
lower-contrast, darker and blur corruptions, the share of images such a gate would flag.
A real lesion's own contrast varies about fourfold, so the gate can only catch the images
that were already flat: it is measured here, not shipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def rms_contrast(im) -> float:
    a = np.asarray(im.convert("RGB"), np.float32) / 255.0
    return float((a @ np.array([0.299, 0.587, 0.114], np.float32)).std())


def main() -> None:
    from robustness import CORRUPTIONS, SEVERITIES

    from skinlesion.data import load_dataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "dermamnist28"))
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--percentile", type=float, default=2.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = load_dataset(args.data)
    pos = np.random.default_rng(args.seed).choice(len(ds), min(args.n, len(ds)), replace=False)
    images = [ds.image(int(i)).convert("RGB") for i in pos]
    clean = np.array([rms_contrast(im) for im in images])
    floor = float(np.percentile(clean, args.percentile))
    out = {"images": len(images), "percentile": args.percentile, "contrast_floor": floor, "flagged": {}}
    print(
        f"{len(images)} images; RMS contrast: 2.5/50/97.5 % = {np.percentile(clean, [2.5, 50, 97.5]).round(3).tolist()}; gate below {floor:.4f}"
    )
    for name in ("lower_contrast", "darker", "blur"):
        rates = []
        for s in SEVERITIES:
            rng = np.random.default_rng(args.seed + s)
            f = CORRUPTIONS[name](s)
            rates.append(float(np.mean([rms_contrast(f(im, rng)) < floor for im in images])))
        out["flagged"][name] = rates
        print(f"{name:15s} " + "  ".join(f"s{s}: {r:5.1%}" for s, r in zip(SEVERITIES, rates)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
