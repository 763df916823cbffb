"""Skin tone (ITA) on the real images: stable under the model's own augmentation; the out-of-range flag.

    python benchmarks/skintone.py --model default --data ../shared/data/dermamnist28 --images 400

Measures, with the model's own preprocessing (``skinlesion.preprocess``, stored in the bundle) and
the ITA estimate of ``skinlesion.skintone``:

- stability: each sampled image at the model's input (the eval transform) against ``--draws`` draws
  of its training augmentation (``Preprocess.train_transform``: random resized crop, flips, quarter
  turns, colour jitter, a round field), and against the same augmentation without its colour jitter
  (geometry only: the skin is the same skin). Per draw: |delta ITA| in degrees and whether the band
  changes; the median over images of each image's median |delta ITA| over its draws.
- the full-resolution sample (600x450) at full resolution, at the model's source resolution, and its
  augmented copies;
- the flag (an upload darker than the training images' 1st percentile of ITA, stored in the bundle by
  ``tools/store_skin_tone.py``): the sampled real images inside that range, each written as a JPEG and
  opened as an upload is (``skinlesion.intake``), and their geometric augmentations: how many are
  flagged (target 0); synthetic dark-skin copies (``skintone.recolour_skin``: the skin moved to an ITA
  in the dark band, below -30 degrees, L* = 50 + b* tan(ITA), b* 10-20; the lesion keeps its contrast)
  of the same images and of the full-resolution sample: the share flagged (target >= 90 %); brown-skin
  copies (ITA -30 to 10) for reference.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def as_upload(rgb: np.ndarray, quality: int = 92):
    """An image as a JPEG upload, opened as the predictor opens one."""
    from skinlesion.intake import open_image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, "JPEG", quality=quality)
    return open_image(buf.getvalue(), "upload.jpg", warn_tiny=False).image


def augmented_pixels(transform, prep, img) -> np.ndarray:
    """One draw of the training transform, back to uint8 pixels at the model's input size."""
    x = transform(img).numpy().transpose(1, 2, 0)
    return np.clip((x * np.asarray(prep.std) + np.asarray(prep.mean)) * 255.0, 0, 255).round().astype(np.uint8)


def stability(prep, images, draws: int, seed: int) -> dict:
    """|delta ITA| and band changes of ``draws`` augmentations per image against its eval-transform pixels."""
    import torch

    from skinlesion import skintone
    from skinlesion.preprocess import with_augment

    torch.manual_seed(seed)
    out = {}
    for name, p in (
        ("training augmentation", prep),
        ("geometry only (no colour jitter)", with_augment(prep, {"brightness": 0, "contrast": 0, "jitter": 0})),
    ):
        tf = p.train_transform()
        deltas, changed, per_image = [], [], []
        for img in images:
            base = skintone.measure(prep.to_pixels(img))
            d = []
            for _ in range(draws):
                t = skintone.measure(augmented_pixels(tf, p, img))
                d.append(abs(t.ita - base.ita))
                changed.append(t.band != base.band)
            deltas += d
            per_image.append(float(np.median(d)))
        deltas = np.asarray(deltas)
        out[name] = {
            "images": len(images),
            "draws": draws,
            "median_abs_delta": float(np.median(per_image)),
            "p90_abs_delta": float(np.percentile(deltas, 90)),
            "band_changed": float(np.mean(changed)),
        }
    return out


def dark_targets(rng, n: int, lo: float, hi: float):
    """(L*, b*) of ``n`` skin colours with an ITA uniform in (lo, hi) degrees and b* uniform in 10-20."""
    ita = rng.uniform(lo, hi, n)
    b = rng.uniform(10, 20, n)
    return np.c_[50 + b * np.tan(np.radians(ita)), b]


def run(model: str, data: Path, n_images: int, draws: int, seed: int = 0) -> dict:
    from skinlesion import skintone
    from skinlesion.bundle import load_config, resolve_model_path
    from skinlesion.data import load_dataset
    from skinlesion.preprocess import with_augment

    cfg = load_config(resolve_model_path(model), check_backbones=False)
    prep = cfg.prep
    rng_range = skintone.training_range(cfg)
    if rng_range is None:
        raise SystemExit(f"{model} stores no training skin tone; run tools/store_skin_tone.py --model {model} first.")
    ds = load_dataset(data / "dermamnist28")
    pos = np.sort(np.random.default_rng(seed).choice(len(ds), min(n_images, len(ds)), replace=False))
    images = [ds.image(int(i)) for i in pos]
    t0 = time.perf_counter()
    res: dict = {"model": model, "training_range": list(rng_range), "images": len(images)}
    res["stability"] = stability(prep, images, draws, seed)

    # the full-resolution sample
    full = Image.open(data / "fullres" / "ISIC_0024310.jpg").convert("RGB")
    tf = prep.train_transform()
    res["fullres"] = {
        "ita_full_resolution": skintone.measure(full).ita,
        "uncertainty_full_resolution": skintone.measure(full).uncertainty,
        "ita_source_resolution": skintone.measure(full, prep).ita,
        "ita_augmented": [skintone.measure(augmented_pixels(tf, prep, full)).ita for _ in range(draws)],
        "flagged": skintone.flag(skintone.measure(as_upload(np.asarray(full)), prep), cfg) is not None,
    }

    # inside the training range: uploaded as files, and their geometric augmentations
    stored = np.array([skintone.measure(im, prep).ita for im in images])  # as the training distribution was measured
    inside = [im for im, a in zip(images, stored) if a >= rng_range[0]]
    geo = with_augment(prep, {"brightness": 0, "contrast": 0, "jitter": 0})
    gtf = geo.train_transform()
    up_flags = [skintone.flag(skintone.measure(as_upload(np.asarray(im)), prep), cfg) is not None for im in inside]
    geo_flags = [
        skintone.flag(skintone.measure(as_upload(augmented_pixels(gtf, geo, im)), prep), cfg) is not None for im in inside for _ in range(2)
    ]
    res["inside"] = {
        "images": len(inside),
        "below_range_in_sample": int(len(images) - len(inside)),
        "uploads_flagged": int(sum(up_flags)),
        "geometric_augmentations": len(geo_flags),
        "geometric_augmentations_flagged": int(sum(geo_flags)),
    }

    # synthetic dark-skin (and brown-skin) copies
    rng = np.random.default_rng(seed + 1)
    copies = {}
    for band, (lo, hi) in (("dark", (-60.0, -30.0)), ("brown", (-30.0, 10.0))):
        targets = dark_targets(rng, len(images), lo, hi)
        tones = [skintone.measure(as_upload(skintone.recolour_skin(im, L, b)), prep) for im, (L, b) in zip(images, targets)]
        full_targets = dark_targets(rng, 20, lo, hi)
        full_tones = [skintone.measure(as_upload(skintone.recolour_skin(full, L, b)), prep) for L, b in full_targets]
        true = np.degrees(np.arctan2(targets[:, 0] - 50, targets[:, 1]))
        copies[band] = {
            "copies": len(tones),
            "flagged": float(np.mean([skintone.flag(t, cfg) is not None for t in tones])),
            "median_abs_error_to_target": float(np.median(np.abs(np.array([t.ita for t in tones]) - true))),
            "measured_in_band": float(np.mean([t.band == band for t in tones])),
            "fullres_copies": len(full_tones),
            "fullres_flagged": float(np.mean([skintone.flag(t, cfg) is not None for t in full_tones])),
        }
    res["copies"] = copies
    res["seconds"] = time.perf_counter() - t0
    return res


def table(res: dict) -> str:
    r = res["training_range"]
    lines = [
        f"training range (1st-99th percentile of ITA, stored in the bundle): {r[0]:.1f} to {r[1]:.1f} degrees; {res['images']} sampled images",
        "",
        "| augmentation | images x draws | median abs(delta ITA) (per-image median) | 90th pct abs(delta ITA) | band changed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in res["stability"].items():
        lines.append(
            f"| {name} | {s['images']} x {s['draws']} | {s['median_abs_delta']:.1f} deg | {s['p90_abs_delta']:.1f} deg | {s['band_changed']:.1%} |"
        )
    f = res["fullres"]
    aug = np.asarray(f["ita_augmented"])
    lines += [
        "",
        f"full-resolution sample ISIC_0024310: ITA {f['ita_full_resolution']:.1f} (half-IQR {f['uncertainty_full_resolution']:.1f}) at 600x450, "
        f"{f['ita_source_resolution']:.1f} at the model's source resolution, augmented {np.median(aug):.1f} "
        f"(range {aug.min():.1f} to {aug.max():.1f}); flagged: {'yes' if f['flagged'] else 'no'}",
        "",
        "| uploads | n | flagged | target |",
        "| --- | --- | --- | --- |",
    ]
    i = res["inside"]
    lines += [
        f"| real images inside the training range, as JPEG uploads | {i['images']} | {i['uploads_flagged']} | 0 |",
        f"| the same, geometric augmentations (crop, flips, turns, round field) | {i['geometric_augmentations']} | "
        f"{i['geometric_augmentations_flagged']} | 0 |",
    ]
    for band, c in res["copies"].items():
        lines += [
            f"| synthetic {band}-skin copies of the real images | {c['copies']} | {c['flagged']:.1%} | {'>= 90 %' if band == 'dark' else '(reference)'} |",
            f"| synthetic {band}-skin copies of the full-resolution sample | {c['fullres_copies']} | {c['fullres_flagged']:.1%} | "
            f"{'>= 90 %' if band == 'dark' else '(reference)'} |",
        ]
    lines += [
        "",
        "copies measured in their target band: "
        + ", ".join(
            f"{b} {c['measured_in_band']:.1%} (median abs error to the target ITA {c['median_abs_error_to_target']:.1f} deg)"
            for b, c in res["copies"].items()
        ),
        f"({i['below_range_in_sample']} of the sampled images are themselves below the 1st percentile, so not 'inside')",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(DATA), help="the shared data folder (dermamnist28/ and fullres/)")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    res = run(args.model, Path(args.data), args.images, args.draws)
    print(table(res))
    print(f"\n({res['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    ok = res["inside"]["uploads_flagged"] == 0 and res["copies"]["dark"]["flagged"] >= 0.9
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
