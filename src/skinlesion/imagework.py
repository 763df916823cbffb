"""The image the photo checks measure, and the split of a lesion from its skin.

:func:`working_image` is the model's source image at most :data:`WORK_SIDE` px a side: the photo-quality
check (:mod:`skinlesion.quality`) and the skin-tone estimate (:mod:`skinlesion.skintone`) both measure it,
so an upload and the training images are measured alike. :func:`otsu` is the threshold between a
lesion's dark region and the skin around it, which both of them and the check on the photo as uploaded
(:mod:`skinlesion.photo_quality`) use. Nothing here imports another module of the package.
"""

from __future__ import annotations

import numpy as np

WORK_SIDE = 128  # the checks work on at most this many pixels a side (their statistics depend on the scale)


def working_image(prep, img):
    """The image the checks look at: the model's source image, at most WORK_SIDE px a side."""
    from PIL import Image

    src = prep.to_source(img)
    if min(src.size) > WORK_SIDE:
        k = WORK_SIDE / min(src.size)
        src = src.resize((max(1, round(src.size[0] * k)), max(1, round(src.size[1] * k))), Image.BILINEAR)
    return src


def otsu(v: np.ndarray) -> float:
    """Otsu's threshold of luminances ``v`` (0-255), on 64 bins."""
    hist, edges = np.histogram(v, bins=64, range=(0, 256))
    p = hist / max(1, hist.sum())
    w0 = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + 2))
    total = mu[-1]
    between = (total * w0 - mu) ** 2 / np.clip(w0 * (1 - w0), 1e-12, None)
    return float(edges[int(np.argmax(between[:-1])) + 1])


def outside_field(lum: np.ndarray) -> np.ndarray:
    """The pixels outside a dermatoscope's black round field: dark regions (luminance < 20) touching the
    border are left out, unless that would leave under a fifth of the image (then every pixel is kept)."""
    from scipy import ndimage

    lab, _ = ndimage.label(lum < 20)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    keep = ~np.isin(lab, edge[edge > 0])
    return keep if keep.sum() > 0.2 * lum.size else np.ones(lum.shape, bool)
