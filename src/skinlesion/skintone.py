"""Skin tone: the individual typology angle (ITA) of the skin around the lesion.

ITA = arctan((L* - 50) / b*) in degrees, from CIELAB L* and b* of the skin (Chardon et al. 1991;
used on dermoscopy by Kinyanjui et al., MICCAI 2020). It is measured on the skin outside the
lesion: the lesion is the largest dark (Otsu) region, as in :mod:`skinlesion.quality`, and the
black dermatoscope field touching the border is left out. The estimate is the median of the
per-pixel ITA of that skin; its uncertainty is half the interquartile range.

Bands (Del Bino & Bernerd 2013): very light > 55, light 41-55, intermediate 28-41, tan 10-28,
brown -30-10, dark < -30.

A bundle may store the training data's ITA distribution under ``metrics["skin_tone"]``
(``counts`` per band, ``range``: the 1st and 99th percentiles); an upload darker than that range
is flagged with :data:`FEW_DARK`. A bundle without it is flagged never, and claims nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BANDS = (("very light", 55.0), ("light", 41.0), ("intermediate", 28.0), ("tan", 10.0), ("brown", -30.0), ("dark", -np.inf))
FEW_DARK = "this model saw few images of skin this dark: the analysis may be less reliable"


@dataclass
class SkinTone:
    ita: float  # degrees
    uncertainty: float  # half the interquartile range of the skin pixels' ITA, degrees
    band: str
    skin_fraction: float  # share of the image measured as skin


def band(ita: float) -> str:
    """The ITA band of an angle in degrees."""
    for name, low in BANDS:
        if ita > low:
            return name
    return "dark"


def skin_mask(rgb: np.ndarray) -> np.ndarray:
    """The skin outside the lesion: not the largest dark (Otsu) region, not the black field touching the border."""
    from scipy import ndimage

    from .quality import _otsu

    lum = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lab, _ = ndimage.label(lum < 20)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    keep = ~np.isin(lab, edge[edge > 0])
    if keep.sum() < 0.2 * lum.size:
        keep = np.ones(lum.shape, bool)
    v = lum[keep]
    if v.max() - v.min() < 8:  # uniform: no lesion to leave out
        return keep
    lesion = (lum < _otsu(v)) & keep
    comp, n = ndimage.label(lesion)
    if n:
        sizes = ndimage.sum(lesion, comp, range(1, n + 1))
        lesion = ndimage.binary_dilation(comp == 1 + int(np.argmax(sizes)), iterations=2)
    skin = keep & ~lesion
    return skin if skin.sum() >= 0.05 * lum.size else keep


def ita_pixels(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel ITA (degrees) of an sRGB uint8 array (H, W, 3)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb.astype(np.float64) / 255.0)
    return np.degrees(np.arctan2(lab[..., 0] - 50.0, lab[..., 2]))


def measure(img) -> SkinTone:
    """The skin tone of one image (PIL image or uint8 RGB array)."""
    rgb = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, np.uint8)
    mask = skin_mask(rgb)
    ita = ita_pixels(rgb)[mask]
    q1, med, q3 = np.percentile(ita, [25, 50, 75])
    return SkinTone(float(med), float((q3 - q1) / 2), band(float(med)), float(mask.mean()))


def training_range(config) -> tuple[float, float] | None:
    """The (low, high) ITA range of the training data stored in a bundle config, or None when not measured."""
    st = (getattr(config, "metrics", None) or {}).get("skin_tone") or {}
    r = st.get("range")
    return (float(r[0]), float(r[1])) if r else None


def flag(tone: SkinTone, config) -> str | None:
    """:data:`FEW_DARK` when the skin is darker than the training range (None inside it, or when not measured)."""
    r = training_range(config)
    return FEW_DARK if r is not None and tone.ita < r[0] else None


def distribution(images) -> dict:
    """The ITA distribution of a set of images: counts per band, percentiles, the range (1st-99th percentile)."""
    itas = np.array([measure(im).ita for im in images], np.float64)
    counts = {name: int(sum(band(a) == name for a in itas)) for name, _ in BANDS}
    p = np.percentile(itas, [1, 5, 50, 95, 99]) if len(itas) else [np.nan] * 5
    return {
        "n_images": len(itas),
        "counts": counts,
        "percentiles": {k: float(v) for k, v in zip(("p1", "p5", "p50", "p95", "p99"), p)},
        "range": [float(p[0]), float(p[4])],
        "method": "ITA = atan((L*-50)/b*) of the skin outside the lesion (median over pixels), skinlesion.skintone",
    }


def band_labels(images) -> np.ndarray:
    """The ITA band of each image (for subgroup metrics: ``skin_tone``)."""
    return np.array([measure(im).band for im in images], dtype=object)
