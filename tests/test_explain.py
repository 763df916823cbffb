"""The heat map shows where the class evidence is: synthetic lesions whose class is decided only by
what lies inside them (issue: the app a clinician would trust, item 3)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

COLOURS = {"akiec": (200, 90, 80), "mel": (40, 25, 30), "nv": (120, 70, 40), "vasc": (170, 20, 50)}
SIDE = 64


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    """360 images of skin with one round lesion anywhere in the frame; the lesion's colour is the class."""
    root = tmp_path_factory.mktemp("lesions")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows, masks = [], {}
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    for k in range(360):
        code = list(COLOURS)[k % len(COLOURS)]
        skin = np.array([225, 180, 150]) + rng.integers(-20, 20, 3)
        img = Image.fromarray(np.clip(np.ones((SIDE, SIDE, 3)) * skin + rng.normal(0, 8, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8))
        r = rng.uniform(13, 19)
        cx, cy = rng.uniform(r + 2, SIDE - r - 2, 2)
        colour = tuple(int(np.clip(v + rng.integers(-15, 15), 0, 255)) for v in COLOURS[code])
        ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        image_id = f"ISIC_{k:07d}"
        img.save(root / "images" / f"{image_id}.png")
        masks[image_id] = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
        rows.append({"lesion_id": f"HAM_{k:07d}", "image_id": image_id, "dx": code, "age": 50, "sex": "male", "localization": "back"})
    pd.DataFrame(rows).assign(dx_type="histo").to_csv(root / "HAM10000_metadata.csv", index=False)
    return root, masks


def test_the_heat_map_puts_most_of_its_mass_inside_the_lesion(lesions):
    from skinlesion.classes import CODES
    from skinlesion.data import load_dataset, make_split
    from skinlesion.predict import Predictor
    from skinlesion.train import TrainConfig, train

    root, masks = lesions
    make_split(load_dataset(root).meta, fractions=(0.7, 0.1, 0.2), seed=0).manifest.to_csv(root / "split.csv", index=False)
    cfg = TrainConfig(
        data=str(root),
        split=str(root / "split.csv"),
        out=str(root / "run"),
        backbone="tf_efficientnet_lite0",  # the shipped model's backbone, with its ImageNet weights
        pretrained=True,
        input_size=SIDE,
        epochs=6,
        batch_size=32,
        lr=2e-3,
        patience=10,
        progress=False,
        num_workers=0,
    )
    train(cfg, finish_model=False)
    assert pd.read_csv(root / "run" / "metrics.csv")["val_accuracy"].max() > 0.9  # it learned the task
    p = Predictor(root / "run" / "best.safetensors", backend="torch")
    test = pd.read_csv(root / "split.csv").query("split == 'test'").head(24)
    inside, area = [], []
    for _, row in test.iterrows():
        img = Image.open(root / "images" / f"{row['image_id']}.png").convert("RGB")
        heat = p.explain(img, target=CODES.index(row["dx"]))
        h = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(img.size, Image.BILINEAR), float)
        mask = masks[row["image_id"]]
        inside.append(h[mask].sum() / h.sum())
        area.append(mask.mean())
    assert np.mean(area) < 0.25
    assert np.mean(inside) >= 0.6, (
        f"only {np.mean(inside):.2f} of the map's mass lies inside the lesions ({np.mean(area):.2f} of the image)"
    )
    assert np.mean(np.array(inside) > np.array(area)) >= 0.8  # most maps beat a uniform map on their own image
