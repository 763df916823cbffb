"""A synthetic, HAM10000-shaped dataset for tests and demos.

``write_synthetic(root)`` writes ``HAM10000_metadata.csv`` and 600x450 JPEGs in the
Kaggle layout (``HAM10000_images_part_1/2`` plus an ignored ``hmnist_28_28_RGB.csv``)
or a flat ``images/`` folder. Lesions have a real-looking multiplicity (most one
image, some two to four) and the seven classes differ visibly, in colour, shape and
texture, so a small model learns them in a few epochs. Nothing here is medical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from ..classes import CODES

# per class: lesion RGB colour, shape ("round", "oval", "blotch", "star"), texture
_LOOK = {
    "akiec": ((200, 90, 80), "blotch", "scales"),
    "bcc": ((230, 170, 170), "round", "vessels"),
    "bkl": ((150, 110, 60), "oval", "stripes"),
    "df": ((180, 120, 100), "round", "ring"),
    "mel": ((40, 25, 30), "star", "dots"),
    "nv": ((120, 70, 40), "round", "plain"),
    "vasc": ((170, 20, 50), "oval", "lobes"),
}
# HAM10000-like imbalance, but every class present
_WEIGHTS = np.array([0.05, 0.07, 0.11, 0.03, 0.11, 0.58, 0.05])
_LOCALIZATIONS = ["back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "scalp"]


def _draw(code: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    skin = np.array([225, 180, 150]) + rng.integers(-20, 20, 3)
    base = np.ones((h, w, 3)) * skin + rng.normal(0, 6, (h, w, 1))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    colour, shape, texture = _LOOK[code]
    colour = tuple(int(np.clip(c + rng.integers(-15, 15), 0, 255)) for c in colour)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    r = min(w, h) * rng.uniform(0.22, 0.32)
    if shape == "round":
        box = [cx - r, cy - r, cx + r, cy + r]
        d.ellipse(box, fill=colour)
    elif shape == "oval":
        box = [cx - 1.4 * r, cy - 0.7 * r, cx + 1.4 * r, cy + 0.7 * r]
        d.ellipse(box, fill=colour)
    else:
        n = 14 if shape == "star" else 9
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * (rng.uniform(0.45, 1.25, n) if shape == "star" else rng.uniform(0.8, 1.1, n))
        d.polygon([(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(rad, ang)], fill=colour)
    dark = tuple(max(0, c - 70) for c in colour)
    light = tuple(min(255, c + 70) for c in colour)
    if texture == "dots":
        for _ in range(40):
            x, y = cx + rng.uniform(-r, r) * 0.8, cy + rng.uniform(-r, r) * 0.8
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(90, 70, 160))
    elif texture == "stripes":
        for k in range(-4, 5):
            d.line([cx - r, cy + k * r / 5, cx + r, cy + k * r / 5 + 10], fill=dark, width=5)
    elif texture == "vessels":
        for _ in range(8):
            pts = [(cx + rng.uniform(-r, r) * 0.8, cy + rng.uniform(-r, r) * 0.8) for _ in range(4)]
            d.line(pts, fill=(200, 20, 30), width=3)
    elif texture == "ring":
        d.ellipse([cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45], fill=light)
    elif texture == "scales":
        for _ in range(60):
            x, y = cx + rng.uniform(-r, r) * 0.8, cy + rng.uniform(-r, r) * 0.8
            d.rectangle([x - 3, y - 3, x + 3, y + 3], fill=(245, 235, 220))
    elif texture == "lobes":
        for _ in range(5):
            x, y = cx + rng.uniform(-r, r) * 0.7, cy + rng.uniform(-r, r) * 0.4
            d.ellipse([x - r / 4, y - r / 4, x + r / 4, y + r / 4], fill=(110, 0, 30))
    return img.filter(ImageFilter.GaussianBlur(radius=max(1.0, w / 300)))


def write_synthetic(
    root: str | Path,
    n_lesions: int = 60,
    *,
    layout: str = "kaggle",
    size: tuple[int, int] = (600, 450),
    seed: int = 0,
    min_per_class: int = 3,
) -> Path:
    """Write a synthetic HAM10000-shaped dataset under ``root`` and return ``root``.

    ``layout`` is ``"kaggle"`` (two image-part folders plus hmnist CSV) or ``"flat"``
    (an ``images/`` folder). Each lesion has one image (about 70 %) or two to four.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = np.maximum(np.round(_WEIGHTS * n_lesions).astype(int), min_per_class)
    lesion_dx = np.repeat(np.arange(len(CODES)), counts)
    rng.shuffle(lesion_dx)
    rows = []
    img_no = 24306  # ISIC ids start where HAM10000's do
    for li, lab in enumerate(lesion_dx):
        mult = int(rng.choice([1, 2, 3, 4], p=[0.7, 0.18, 0.08, 0.04]))
        age = float(rng.integers(3, 17) * 5)
        sex = str(rng.choice(["male", "female"]))
        loc = str(rng.choice(_LOCALIZATIONS))
        for _ in range(mult):
            rows.append(
                {
                    "lesion_id": f"HAM_{li:07d}",
                    "image_id": f"ISIC_{img_no:07d}",
                    "dx": CODES[lab],
                    "dx_type": "histo" if CODES[lab] in ("mel", "bcc", "akiec") else "follow_up",
                    "age": age,
                    "sex": sex,
                    "localization": loc,
                }
            )
            img_no += 1
    meta = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    if layout == "kaggle":
        folders = [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
        (root / "hmnist_28_28_RGB.csv").write_text("pixel0000,label\n0,0\n")
    elif layout == "flat":
        folders = [root / "images"]
    else:
        raise ValueError(f"unknown layout {layout!r}; use 'kaggle' or 'flat'")
    for f in folders:
        f.mkdir(exist_ok=True)
    for k, row in meta.iterrows():
        img = _draw(row["dx"], rng, size)
        img.save(folders[k % len(folders)] / f"{row['image_id']}.jpg", quality=90)
    return root
