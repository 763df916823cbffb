"""Photo quality at the photo's own resolution: how often the full-resolution check names blur and exposure.

    python benchmarks/fullres_quality.py [--copies 200] [--model default]

The one real full-resolution HAM10000 photo (``../shared/data/fullres/ISIC_0024310.jpg``, 600x450,
the app's sample) and its synthetic copies:

- unaltered: a random crop (70-100 % of each side), a flip, a rotation (a quarter turn and up to
  +-12 degrees, the corners cropped away), a scale change (0.8-1.25x, at least 260 px on the short
  side so that the copy is checked) and a JPEG recompression (quality 70-95), each drawn per copy;
- corrupted: the same copies, before their JPEG recompression, blurred by a Gaussian of sigma 2, 3,
  4, 5, 6 or 8 px (in the copy's own pixels; the target is on 4 and more, 2 and 3 show where the
  threshold lies), or brightened / darkened by :mod:`skinlesion.corruptions` at severities 1-5
  (the target is on 2-5; severity 1, x1.15 / x0.9, is inside what real photos look like).

Reports the share of each population that the full-resolution check (:mod:`skinlesion.photo_quality`)
names the problem for, and the share of unaltered copies it names anything for (false alarms).
With ``--model``, the same copies through the model-input check (:mod:`skinlesion.quality`, on the
28-pixel image the model sees) side by side. With ``../shared/data/dermamnist28``, the exposure
rules on the 8,010 real HAM10000 images at 28 px (luminance survives the reduction; sharpness does
not, so blur is not measured there).
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SAMPLE = SHARED / "fullres" / "ISIC_0024310.jpg"
SIGMAS = (2, 3, 4, 5, 6, 8)  # the target is on 4 and more; 2 and 3 show where the threshold lies
SEVERITIES = (1, 2, 3, 4, 5)


def gaussian_blur(img: Image.Image, sigma: float) -> Image.Image:
    """The photo under a Gaussian of ``sigma`` px (per channel, scipy: sigma exactly, not Pillow's box approximation)."""
    from scipy import ndimage

    a = np.asarray(img.convert("RGB"), np.float64)
    b = np.stack([ndimage.gaussian_filter(a[..., c], sigma) for c in range(3)], -1)
    return Image.fromarray(np.clip(np.rint(b), 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality))
    return Image.open(buf).convert("RGB")


def geometry(img: Image.Image, rng) -> Image.Image:
    """A crop, a flip, a rotation and a scale change of the photo (no pixel values made up: rotated corners are cut away)."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_TOP_BOTTOM)
    img = img.rotate(90 * int(rng.integers(0, 4)), expand=True)
    angle = rng.uniform(-12, 12)
    if abs(angle) > 0.5:
        w, h = img.size
        img = img.rotate(angle, resample=Image.BICUBIC)
        t = abs(np.tan(np.radians(angle)))
        dx, dy = int(np.ceil(h * t / 2)) + 1, int(np.ceil(w * t / 2)) + 1  # the filled corners, cut away
        img = img.crop((dx, dy, w - dx, h - dy))
    k = max(rng.uniform(0.8, 1.25), 260 / min(img.size))  # a copy stays large enough to be checked (>= 256 px)
    return img.resize((max(1, round(img.size[0] * k)), max(1, round(img.size[1] * k))), Image.BICUBIC)


def copies(photo: Image.Image, n: int, seed: int = 0, corruption=None) -> list[Image.Image]:
    """``n`` synthetic copies of ``photo``: geometry, then ``corruption`` (a function of an image), then JPEG."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = geometry(photo, rng)
        q = int(rng.integers(70, 96))
        if corruption is not None:
            img = corruption(img)
        out.append(jpeg(img, q))
    return out


def populations(photo: Image.Image, n: int, seed: int = 0) -> dict:
    """name -> (problem it should be named for or None, the copies); every population from the same geometric draws."""
    from skinlesion.corruptions import CORRUPTIONS

    pops = {"unaltered": (None, copies(photo, n, seed))}
    for s in SIGMAS:
        pops[f"blur sigma {s}"] = ("blurred", copies(photo, n, seed, lambda im, s=s: gaussian_blur(im, s)))
    for name, problem in (("brighter", "overexposed"), ("darker", "underexposed")):
        for sev in SEVERITIES:
            f = CORRUPTIONS[name](sev)
            pops[f"{name} severity {sev}"] = (problem, copies(photo, n, seed, lambda im, f=f: f(im, None)))
    return pops


@functools.lru_cache(maxsize=2)
def _predictor(model: str):
    from skinlesion.predict import Predictor

    return Predictor(model)


def model_input_named(model: str, images) -> list[list[str]]:
    """The model-input check's problems (skinlesion.quality, on the image the model sees) for each image."""
    p = _predictor(model)
    out = []
    for i in range(0, len(images), 64):
        part = images[i : i + 64]
        _, feats = p.probabilities(p.prep.batch(part))
        out += p.quality_problems(part, feats)
    return out


def real_exposure(folder: Path) -> dict | None:
    """The exposure rules on the real DermaMNIST images (28 px): the share each rule names."""
    from skinlesion.photo_quality import measure, named

    npz = folder / "dermamnist_trainval.npz"
    if not npz.exists():
        return None
    d = np.load(npz)
    arrays = np.concatenate([d["train_images"], d["val_images"]])
    hits = [named(measure(Image.fromarray(a))) for a in arrays]
    return {
        "n": len(arrays),
        "overexposed": float(np.mean(["overexposed" in h for h in hits])),
        "underexposed": float(np.mean(["underexposed" in h for h in hits])),
        "either": float(np.mean([("overexposed" in h) or ("underexposed" in h) for h in hits])),
    }


def run(n: int = 200, seed: int = 0, model: str | None = None, photo_path: Path = SAMPLE) -> dict:
    from skinlesion.photo_quality import check

    photo = Image.open(photo_path).convert("RGB")
    t0 = time.perf_counter()
    rows = []
    measured = 0
    for name, (problem, images) in populations(photo, n, seed).items():
        results = [check(im) for im in images]
        measured += len(images)
        named = [r.problems for r in results]
        row = {
            "population": name,
            "problem": problem,
            "n": len(images),
            "checked": float(np.mean([r.checked for r in results])),
            "named_it": None if problem is None else float(np.mean([problem in x for x in named])),
            "named_any": float(np.mean([bool(x) for x in named])),
            "per_problem": {p: float(np.mean([p in x for x in named])) for p in ("overexposed", "underexposed", "blurred")},
        }
        if problem == "blurred" or problem is None:
            sharp = [r.measures["sharpness"] for r in results if r.checked and r.measures["sharpness"] is not None]
            row["sharpness"] = [float(np.percentile(sharp, q)) for q in (5, 50, 95)]
        if model:
            mi = model_input_named(model, images)
            row["model_input_named_it"] = None if problem is None else float(np.mean([problem in x for x in mi]))
            row["model_input_named_any"] = float(np.mean([bool(x) for x in mi]))
        rows.append(row)
    seconds = time.perf_counter() - t0
    return {"rows": rows, "real_exposure": real_exposure(SHARED / "dermamnist28"), "seconds": seconds, "images": measured}


def _pct(x):
    return "" if x is None else f"{100 * x:.1f} %"


def table(result: dict, with_model: bool) -> str:
    head = "| population | n | named it | named anything |" + (" model-input check names it | model-input any |" if with_model else "")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in result["rows"]:
        cells = [r["population"], str(r["n"]), _pct(r["named_it"]), _pct(r["named_any"])]
        if with_model:
            cells += [_pct(r.get("model_input_named_it")), _pct(r.get("model_input_named_any"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=200, help="copies per population")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="also run the model-input check of this model on the same copies")
    args = ap.parse_args(argv)
    if not SAMPLE.exists():
        print(f"The full-resolution sample {SAMPLE} is absent; it lives in ../shared/data beside the checkout.", file=sys.stderr)
        return 2
    result = run(args.copies, args.seed, args.model)
    print(table(result, bool(args.model)))
    for r in result["rows"]:
        if "sharpness" in r:
            print(f"sharpness 5/50/95 %: {r['population']}: " + " / ".join(f"{v:.3f}" for v in r["sharpness"]))
    unaltered = result["rows"][0]
    print(f"false alarms on unaltered copies: {_pct(unaltered['named_any'])} ({unaltered['per_problem']})")
    if result["real_exposure"]:
        e = result["real_exposure"]
        print(
            f"real HAM10000 at 28 px (n={e['n']}): overexposed {_pct(e['overexposed'])}, "
            f"underexposed {_pct(e['underexposed'])}, either {_pct(e['either'])}"
        )
    print(f"{result['images']} photos checked in {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
