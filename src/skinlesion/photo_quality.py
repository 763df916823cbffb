"""Photo quality at the photo's own resolution: blur and exposure measured on the upload as it came.

:mod:`skinlesion.quality` looks at the image the model sees (28 px for DermaMNIST models), where a
600x450 photo blurred by a 6-pixel Gaussian looks as sharp as any other. This check looks at the
photo as uploaded, before the model's reduction, and only when there is more to see than the model
sees: a short side of at least :data:`MIN_SIDE` px (and larger than the model's source size). The
28-pixel check stays for the model's input; both name problems with the same codes
(:data:`skinlesion.quality.PROBLEMS`), and a problem both name is shown once
(:func:`skinlesion.verdict.quality_advice`).

What it measures, on the photo reduced to at most :data:`WORK_LONG_SIDE` px on its long side (never
enlarged), inside the dermatoscope's field (dark regions touching the edge are left out):

- **sharpness**: the detail at the finest scales against the image's own coarse content,
  ``(|G1 - G2| + |G2 - G4|) / |G4 - G8|`` (``Gs``: the luminance under a Gaussian of ``s`` px; ``|.|``
  the root mean square). Blur removes the fine bands and leaves the coarse one, whatever the lesion;
  the fixed working size makes the number independent of the photo's pixel count. Below
  :data:`BLUR_BELOW`: "blurred".
- **exposure**: the median luminance of the skin (the field's pixels above the Otsu threshold), the
  share of the field with a channel at 250 or more (clipped), and the 99th percentile of the
  brightest channel. Over :data:`OVER_SKIN` or :data:`OVER_CLIPPED` clipped: "overexposed";
  skin under :data:`UNDER_SKIN` with nothing brighter than :data:`UNDER_P99`: "underexposed".
- **framing** is not measured again: the lesion's place and size survive the reduction to the
  model's input, and the model-input check (fitted per model on its training images) names a lesion
  cut by the frame, off centre or too small.

How the thresholds were set. No full-resolution training data ships with a model, so the
thresholds are constants of this module, not fitted per model. They were set on the one real
full-resolution HAM10000 photo (``samples/ISIC_0024310.jpg``, 600x450) and its synthetic copies
(``benchmarks/fullres_quality.py``): crops, flips, rotations, JPEG recompression (quality 70-95) and
scale changes (0.8-1.25x) as the unaltered photos; the same copies blurred by a Gaussian of sigma
4-8 px, or brightened / darkened by :mod:`skinlesion.corruptions` at severities 2-5, as the corrupted
ones. Measured there (benchmarks/RESULTS.md, "Photo quality at the photo's resolution"): each problem
named in at least 90 % of its corrupted copies, at most 5 % of the unaltered copies named anything.
The exposure thresholds were checked against the 8,010 real HAM10000 images of DermaMNIST as well
(luminance survives the reduction to 28 px): each exposure rule fires on 1.4 % of them.
Severity 1 (x1.15 brighter, x0.9 darker) and blur of sigma 2 px stay inside what real HAM10000
photos look like and are not named (sigma 3: 99 % named). One real photo is a narrow base: a photo of a lesion
with unusually little fine texture can read as blurred, and a photo of dark skin as underexposed
(the skin-tone flag of :mod:`skinlesion.skintone` is shown beside it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_SIDE = 256  # photos with a shorter side than this are not checked here (the model-input check still is)
WORK_LONG_SIDE = 512  # the photo is reduced to this long side first (its statistics depend on the scale)
BLUR_BELOW = 0.80  # sharpness; unaltered copies 1.25-1.31, blurred by sigma 2 0.84-0.91, by 3 0.69-0.75, by 4 0.58-0.65
OVER_SKIN = 225.0  # skin luminance (0-255); the sample 166, x1.3 brighter 209
OVER_CLIPPED = 0.40  # share of the field clipped; the sample 0.00, x1.3 brighter 0.80
UNDER_SKIN = 140.0  # skin luminance; the sample 166, x0.8 darker 132 ...
UNDER_P99 = 200.0  # ... with its brightest pixels (99th percentile of the brightest channel) under this: x0.8 184
METHOD = (
    "measured on the photo as uploaded (at most 512 px long side); thresholds set on one real 600x450 HAM10000 "
    "photo and its synthetic copies, not fitted per model"
)
PROBLEMS = ("overexposed", "underexposed", "blurred")  # codes of skinlesion.quality.PROBLEMS


@dataclass(frozen=True)
class PhotoQuality:
    """What the full-resolution check found on one photo: the problems named and the measured numbers."""

    size: tuple[int, int]  # the photo's (w, h) as uploaded
    checked: bool  # False: no larger than the model's input, nothing measured here
    problems: list[str] = field(default_factory=list)  # codes of skinlesion.quality.PROBLEMS
    measures: dict = field(default_factory=dict)  # sharpness, skin_luminance, clipped, brightest_p99


def applies(size, source_size: int | None = None) -> bool:
    """Whether a photo of ``size`` (w, h) is checked at its own resolution: larger than the model's input."""
    return min(size) >= max(MIN_SIDE, int(source_size or 0) + 1)


def working(img):
    """The photo reduced to at most WORK_LONG_SIDE px on its long side (never enlarged), in RGB."""
    from PIL import Image

    img = img.convert("RGB") if img.mode != "RGB" else img
    k = WORK_LONG_SIDE / max(img.size)
    if k < 1:
        img = img.resize((max(1, round(img.size[0] * k)), max(1, round(img.size[1] * k))), Image.LANCZOS)
    return img


def _otsu(v: np.ndarray) -> float:
    from .imagework import otsu as _otsu

    return _otsu(v)


def measure(img) -> dict:
    """Sharpness and exposure of one photo (see the module docstring); ``sharpness`` is None where nothing varies."""
    from scipy import ndimage

    from .imagework import outside_field

    a = np.asarray(working(img), np.float64)
    h, w = a.shape[:2]
    lum = a @ np.array([0.299, 0.587, 0.114])
    keep = outside_field(lum)  # the black round field of a dermatoscope is not part of the photo's exposure or focus
    v = lum[keep]
    skin = keep & (lum >= _otsu(v))
    if skin.sum() < 0.1 * keep.sum():
        skin = keep
    brightest = a.max(-1)[keep]
    out = {
        "skin_luminance": float(np.median(lum[skin])),
        "clipped": float((brightest >= 250).mean()),
        "brightest_p99": float(np.percentile(brightest, 99)),
    }
    # sharpness: fine bands against the coarse one, away from the field's edge and the image border
    g = {s: ndimage.gaussian_filter(lum, s) for s in (1, 2, 4, 8)}
    inner = ndimage.binary_erosion(keep, iterations=8)
    margin = 16
    inner[:margin], inner[-margin:], inner[:, :margin], inner[:, -margin:] = False, False, False, False
    if inner.sum() < 0.1 * h * w:
        inner = np.ones((h, w), bool)

    def band(s1, s2):
        return float(np.sqrt(np.mean((g[s1] - g[s2])[inner] ** 2)))

    coarse = band(4, 8)
    out["sharpness"] = (band(1, 2) + band(2, 4)) / coarse if coarse > 0.5 else None  # a flat photo: nothing to judge
    return out


def named(m: dict) -> list[str]:
    """The problems the measures ``m`` (:func:`measure`) name, in :data:`PROBLEMS` order."""
    out = []
    if m["skin_luminance"] > OVER_SKIN or m["clipped"] > OVER_CLIPPED:
        out.append("overexposed")
    if m["skin_luminance"] < UNDER_SKIN and m["brightest_p99"] < UNDER_P99:
        out.append("underexposed")
    if m["sharpness"] is not None and m["sharpness"] < BLUR_BELOW:
        out.append("blurred")
    return out


def check(img, source_size: int | None = None) -> PhotoQuality:
    """The full-resolution check of one photo (PIL); nothing is measured where the photo is no larger than
    the model's input (``source_size``: the side of the image the model sees)."""
    size = tuple(int(v) for v in img.size)
    if not applies(size, source_size):
        return PhotoQuality(size=size, checked=False)
    m = measure(img)
    return PhotoQuality(size=size, checked=True, problems=named(m), measures=m)
