"""What real dermoscopy photos get wrong, at five severities: the one definition of the corruptions.

``CORRUPTIONS[name](severity)`` returns ``f(image, rng) -> image`` acting on a PIL image at the
model's source resolution (28 px for DermaMNIST models), where a real upload is reduced to
before it reaches the network. Severity 3 is the middle one. The robustness benchmark
(``benchmarks/robustness.py``) measures the model under each; the photo-quality check
(:mod:`skinlesion.quality`) is fitted to name them.

Photometric: brighter, darker, lower/higher contrast, blur, noise, JPEG. Dermoscopy artefacts:
black corners of a round field, violet ink marks, hair. Framing: the lesion off centre, cut by
the frame, too small in the photo.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

SEVERITIES = (1, 2, 3, 4, 5)


def _enhance(kind, factor):
    return lambda im, rng: kind(im).enhance(factor)


def brighter(s):
    return _enhance(ImageEnhance.Brightness, 1 + 0.15 * s)


def darker(s):
    return _enhance(ImageEnhance.Brightness, 1 - 0.1 * s)


def lower_contrast(s):
    return _enhance(ImageEnhance.Contrast, 1 - 0.15 * s)


def higher_contrast(s):
    return _enhance(ImageEnhance.Contrast, 1 + 0.2 * s)


def corners(s):
    from .preprocess import round_field

    radius = 0.95 - 0.08 * s  # 0.71 at severity 3: the circle touches the edges, the corners are black
    return lambda im, rng: Image.fromarray(round_field(np.asarray(im), radius))


def _lines(im, rng, n, colour, width_frac, curvy):
    im = im.copy()
    w, h = im.size
    d = ImageDraw.Draw(im)
    for _ in range(n):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        ang = rng.uniform(0, 2 * np.pi)
        pts = [(x, y)]
        for _ in range(8):
            ang += rng.normal(0, 0.35 if curvy else 0.05)
            x, y = x + np.cos(ang) * w / 10, y + np.sin(ang) * h / 10
            pts.append((x, y))
        d.line(pts, fill=colour, width=max(1, int(round(width_frac * w))))
    return im


def ink(s):
    return lambda im, rng: _lines(im, rng, s, (110, 40, 150), 0.06, curvy=False)


def hair(s):
    return lambda im, rng: _lines(im, rng, 2 * s, (35, 25, 20), 0.035, curvy=True)


def blur(s):
    return lambda im, rng: im.filter(ImageFilter.GaussianBlur(radius=0.25 * s * im.size[0] / 28))


def noise(s):
    def f(im, rng):
        a = np.asarray(im, np.float32) + rng.normal(0, 5 * s, (im.size[1], im.size[0], 3))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

    return f


def jpeg(s):
    def f(im, rng):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90 - 15 * s)
        return Image.open(buf).convert("RGB")

    return f


def _skin(a: np.ndarray) -> np.ndarray:
    """The colour of the skin around a lesion: the median of the image's outer ring."""
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return np.median(ring, axis=0)


def _shift(im, rng, frac):
    """Move the content by ``frac`` of the image size in a random direction; the uncovered part is skin."""
    a = np.asarray(im)
    h, w = a.shape[:2]
    ang = rng.uniform(0, 2 * np.pi)
    dy, dx = int(round(np.sin(ang) * frac * h)), int(round(np.cos(ang) * frac * w))
    out = np.empty_like(a)
    out[:] = _skin(a).astype(a.dtype)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return Image.fromarray(out)


def off_centre(s):
    return lambda im, rng: _shift(im, rng, 0.07 * s)  # 21 % of the size at severity 3: clearly off centre, still inside


def cut_by_frame(s):
    return lambda im, rng: _shift(im, rng, 0.25 + 0.06 * s)  # 43 % at severity 3: the lesion crosses the frame


def too_small(s):
    """The lesion photographed from too far: the content shrunk to 1 - 0.15 s of the frame, on skin."""

    def f(im, rng):
        a = np.asarray(im)
        h, w = a.shape[:2]
        k = 1 - 0.15 * s
        sh, sw = max(1, int(round(h * k))), max(1, int(round(w * k)))
        small = np.asarray(im.resize((sw, sh), Image.BILINEAR))
        out = np.empty_like(a)
        out[:] = _skin(a).astype(a.dtype)
        y, x = (h - sh) // 2, (w - sw) // 2
        out[y : y + sh, x : x + sw] = small
        return Image.fromarray(out)

    return f


CORRUPTIONS = {
    "brighter": brighter,
    "darker": darker,
    "lower_contrast": lower_contrast,
    "higher_contrast": higher_contrast,
    "black_corners": corners,
    "ink_marks": ink,
    "hair": hair,
    "blur": blur,
    "noise": noise,
    "jpeg": jpeg,
    "off_centre": off_centre,
    "cut_by_frame": cut_by_frame,
    "too_small": too_small,
}


def corrupt(images, name: str, severity: int, seed: int = 0) -> list:
    """``images`` (PIL) under one corruption at one severity, reproducibly."""
    rng = np.random.default_rng(seed + severity)
    f = CORRUPTIONS[name](severity)
    return [f(im, rng) for im in images]
