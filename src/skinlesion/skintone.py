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

import warnings
from dataclasses import dataclass

import numpy as np

BANDS = (("very light", 55.0), ("light", 41.0), ("intermediate", 28.0), ("tan", 10.0), ("brown", -30.0), ("dark", -np.inf))
BAND_NAMES = tuple(name for name, _ in BANDS)
FEW_DARK = "this model saw few images of skin this dark: the analysis may be less reliable"
MAX_IMAGES = 4000  # the training distribution is measured on all training images, or a seeded sample of this many


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

    from .imagework import otsu as _otsu

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


def measure(img, prep=None) -> SkinTone:
    """The skin tone of one image (PIL image or uint8 RGB array).

    ``prep`` (a model's :class:`skinlesion.preprocess.Preprocess`): measured on the image the photo-quality
    check sees (the model's source resolution, at most 128 px a side), so that an upload and the training
    images are measured alike."""
    if prep is not None:
        from .imagework import working_image

        img = working_image(prep, img if hasattr(img, "convert") else _pil(img))
    rgb = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, np.uint8)
    mask = skin_mask(rgb)
    ita = ita_pixels(rgb)[mask]
    q1, med, q3 = np.percentile(ita, [25, 50, 75])
    return SkinTone(float(med), float((q3 - q1) / 2), band(float(med)), float(mask.mean()))


def _pil(rgb):
    from PIL import Image

    return Image.fromarray(np.asarray(rgb, np.uint8), "RGB")


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
    return distribution_of(np.array([measure(im).ita for im in images], np.float64))


def distribution_of(itas) -> dict:
    """:func:`distribution` of measured ITAs (degrees). No images: no range (nothing is ever flagged)."""
    itas = np.asarray(itas, np.float64)
    counts = {name: int(sum(band(a) == name for a in itas)) for name in BAND_NAMES}
    p = [float(v) for v in np.percentile(itas, [1, 5, 50, 95, 99])] if len(itas) else None
    return {
        "n_images": len(itas),
        "counts": counts,
        "percentiles": dict(zip(("p1", "p5", "p50", "p95", "p99"), p)) if p else None,
        "range": [p[0], p[4]] if p else None,
        "method": "ITA = atan((L*-50)/b*) of the skin outside the lesion (median over pixels), skinlesion.skintone",
    }


def band_labels(images, prep=None) -> np.ndarray:
    """The ITA band of each image (for subgroup metrics: ``skin_tone``)."""
    return bands_of([measure(im, prep).ita for im in images])


def bands_of(itas) -> np.ndarray:
    """The ITA band of each angle (degrees), as an object array of band names."""
    return np.array([band(float(a)) for a in itas], dtype=object)


def dataset_itas(ds, positions, prep=None) -> np.ndarray:
    """The ITA (degrees) of the images at ``positions`` of a :class:`skinlesion.data.Dataset`, measured as uploads are."""
    return np.array([measure(ds.image(int(i)), prep).ita for i in positions], np.float64)


def training_distribution(ds, positions, prep=None, max_images: int = MAX_IMAGES, seed: int = 0, itas=None) -> dict:
    """The ITA distribution (:func:`distribution`) of a dataset's training images, the ``skin_tone`` a bundle stores.

    ``positions``: the training rows; more than ``max_images``: a seeded random sample of them. ``prep``: the
    model's preprocessing (each image is measured as an upload to that model is). ``itas``: those rows' ITAs,
    already measured (then all are used)."""
    pos = np.asarray(positions, int)
    n = len(pos)
    if itas is None:
        if n > max_images:
            pos = np.sort(np.random.default_rng(seed).choice(pos, max_images, replace=False))
        itas = dataset_itas(ds, pos, prep)
    d = distribution_of(itas)
    d["measured_on"] = f"{len(itas)} of {n} training images" if len(itas) < n else f"all {n} training images"
    if prep is not None:
        d["measured_on"] += " at the model's source resolution" if prep.source_size else ", at most 128 px a side"
    return d


def distribution_lines(dist: dict | None) -> list[str]:
    """Markdown: the training images' ITA band counts and the range outside which an upload is flagged."""
    if not dist:
        return ["Skin tone of the training images: not measured (this model flags no skin tone as outside its range)."]
    n = max(1, dist["n_images"])
    lines = [
        f"Skin tone of the training images (individual typology angle, ITA; {dist.get('measured_on', f'{n} images')}):",
        "",
        "| ITA band | degrees | images | share |",
        "| --- | --- | --- | --- |",
    ]
    edges = {name: low for name, low in BANDS}
    for i, name in enumerate(BAND_NAMES):
        hi = BANDS[i - 1][1] if i else None
        span = f"> {edges[name]:g}" if hi is None else (f"< {hi:g}" if name == "dark" else f"{edges[name]:g} to {hi:g}")
        c = dist["counts"].get(name, 0)
        lines.append(f"| {name} | {span} | {c} | {c / n:.1%} |")
    r = dist.get("range")
    if r:
        lines += [
            "",
            f"Range (1st-99th percentile): {r[0]:.1f} to {r[1]:.1f} degrees. An upload whose skin has an ITA under "
            f'{r[0]:.1f} degrees is told: "{FEW_DARK}".',
        ]
    return lines


def recolour_skin(img, L: float, b: float, prep=None) -> np.ndarray:
    """A copy of an image whose skin has CIELAB L* and b* moved to (about) ``L`` and ``b``, for validation:
    every pixel's L* and b* are shifted by the same amount, so the lesion keeps its contrast to the skin
    (L* clipped to 2-98). The shift is the skin's median (outside the lesion, :func:`skin_mask`) to the target."""
    from skimage.color import lab2rgb, rgb2lab

    rgb = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, np.uint8)
    lab = rgb2lab(rgb.astype(np.float64) / 255.0)
    skin = skin_mask(rgb)
    lab[..., 0] = np.clip(lab[..., 0] + (L - np.median(lab[..., 0][skin])), 2.0, 98.0)
    lab[..., 2] = lab[..., 2] + (b - np.median(lab[..., 2][skin]))
    with warnings.catch_warnings():  # colours outside sRGB are clipped, as intended
        warnings.simplefilter("ignore", UserWarning)
        rgb = lab2rgb(lab)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
