"""Reading datasets, splitting them, and every kind of bad input (issue: foundation)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.classes import CODES, DIAGNOSES, MALIGNANT
from skinlesion.data import load_dataset, make_split
from skinlesion.data.split import max_share_deviation, shared_lesions

from .conftest import shared


def test_classes_are_the_dermamnist_order_with_malignancy():
    assert CODES == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert MALIGNANT == ("akiec", "bcc", "mel")
    assert all(d.name and len(d.description) > 30 for d in DIAGNOSES)


# ---- real data -----------------------------------------------------------------------


def test_default_split_of_real_metadata_is_leak_free_and_stratified(run_cli, tmp_path):
    csv = shared("HAM10000_metadata.csv")
    out = tmp_path / "split.csv"
    code, text, _ = run_cli("split", csv, "--out", out)
    assert code == 0
    m = pd.read_csv(out)
    assert list(m.columns) == ["image_id", "lesion_id", "dx", "split"]
    assert len(m) == 10015 and m["lesion_id"].nunique() == 7470
    assert shared_lesions(m) == 0
    assert max_share_deviation(m) <= 0.02
    frac = m["split"].value_counts(normalize=True)
    assert abs(frac["train"] - 0.70) < 0.01 and abs(frac["val"] - 0.10) < 0.01 and abs(frac["test"] - 0.20) < 0.01
    assert "lesions in more than one split: 0" in text
    # fixed seed: the same split twice
    out2 = tmp_path / "again.csv"
    run_cli("split", csv, "--out", out2)
    assert pd.read_csv(out2).equals(m)


def test_image_level_split_reports_its_leak(run_cli, tmp_path):
    csv = shared("HAM10000_metadata.csv")
    code, text, _ = run_cli("split", csv, "--kind", "image", "--out", tmp_path / "s.csv")
    m = pd.read_csv(tmp_path / "s.csv")
    train_lesions = set(m.loc[m.split == "train", "lesion_id"])
    leaked = int(m.loc[m.split == "test", "lesion_id"].isin(train_lesions).sum())
    assert code == 0 and leaked > 300  # HAM10000 has 1,956 multi-image lesions
    assert f"test images with a sibling image of the same lesion in train: {leaked}" in text
    assert "WARNING" in text


def test_info_reads_real_dermamnist_folder_and_npz(run_cli):
    folder = shared("dermamnist28")
    official = pd.read_csv(folder / "dermamnist_split.csv")
    meta = pd.read_csv(folder / "HAM10000_metadata.csv").merge(official, on="image_id")
    expected = meta["dx"].value_counts()
    code, text, _ = run_cli("info", folder)
    assert code == 0, text
    assert "images: 8010" in text and "problems: none" in text
    for c in CODES:
        assert any(line.split()[:2] == [c, str(expected[c])] for line in text.splitlines()), c
    assert "official split: train 7007, val 1003" in text
    ds = load_dataset(folder / "dermamnist_trainval.npz")
    assert len(ds) == 8010 and ds.arrays.shape == (8010, 28, 28, 3)
    assert ds.meta["dx"].value_counts().to_dict() == expected.to_dict()
    # the npz beside the metadata recovers real ids, so both layouts agree image by image
    folder_ds = load_dataset(folder)
    a = folder_ds.meta.set_index("image_id")["dx"]
    assert (ds.meta.set_index("image_id")["dx"] == a.loc[ds.meta["image_id"]]).all()
    i = int(np.flatnonzero(ds.meta["image_id"] == folder_ds.meta["image_id"].iloc[0])[0])
    diff = np.abs(np.asarray(ds.image(i), int) - np.asarray(folder_ds.image(0), int))
    assert diff.mean() < 8  # the JPEG copies are re-encodings of the same arrays


def test_official_split_reads_dermamnist_split(run_cli, tmp_path):
    folder = shared("dermamnist28")
    code, text, _ = run_cli("split", folder, "--kind", "official", "--out", tmp_path / "s.csv")
    m = pd.read_csv(tmp_path / "s.csv")
    assert code == 0
    assert m["split"].value_counts().to_dict() == {"train": 7007, "val": 1003}
    assert "val images with a sibling image of the same lesion in train: 348" in text


# ---- synthetic, full resolution --------------------------------------------------------


def test_synthetic_kaggle_layout_round_trips_through_info_and_split(synth_kaggle, run_cli, tmp_path):
    meta = pd.read_csv(synth_kaggle / "HAM10000_metadata.csv")
    assert (synth_kaggle / "HAM10000_images_part_1").is_dir() and (synth_kaggle / "hmnist_28_28_RGB.csv").exists()
    assert meta.groupby("lesion_id").size().max() > 1  # some lesions have several images
    with Image.open(next((synth_kaggle / "HAM10000_images_part_2").glob("*.jpg"))) as im:
        assert im.size == (600, 450)
    code, text, _ = run_cli("info", synth_kaggle)
    assert code == 0 and f"images: {len(meta)}" in text and "layout: kaggle" in text
    code, text, _ = run_cli("split", synth_kaggle, "--out", tmp_path / "split.csv")
    m = pd.read_csv(tmp_path / "split.csv")
    assert code == 0 and set(m["image_id"]) == set(meta["image_id"]) and shared_lesions(m) == 0
    assert set(m["split"]) == {"train", "val", "test"}


def test_flat_layout_png_and_any_subfolder(tmp_path, run_cli):
    from skinlesion.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "d", n_lesions=8, layout="flat", size=(120, 90), min_per_class=1)
    # move one image into a nested folder as PNG, another beside the CSV as .jpeg
    imgs = sorted((root / "images").glob("*.jpg"))
    nested = root / "more" / "deeper"
    nested.mkdir(parents=True)
    Image.open(imgs[0]).save(nested / (imgs[0].stem + ".png"))
    imgs[0].unlink()
    shutil.move(imgs[1], root / (imgs[1].stem + ".jpeg"))
    ds = load_dataset(root)
    assert ds.layout == "folder" and ds.meta["path"].notna().all()
    assert ds.image(0).mode == "RGB"


def test_synthetic_classes_differ_visibly(tmp_path):
    from skinlesion.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path, n_lesions=14, layout="flat", size=(120, 90), min_per_class=2)
    ds = load_dataset(root)
    means = {c: np.mean([np.asarray(ds.image(i), float).mean((0, 1)) for i in np.flatnonzero(ds.meta["dx"] == c)], axis=0) for c in CODES}
    # every pair of classes differs in mean colour by a visible margin
    for a in CODES:
        for b in CODES:
            if a < b:
                assert np.abs(means[a] - means[b]).max() > 3, (a, b)


def test_lesion_split_rejects_bad_fractions(synth_kaggle):
    from skinlesion.errors import SkinLesionError

    ds = load_dataset(synth_kaggle)
    with pytest.raises(SkinLesionError, match="add up to 1"):
        make_split(ds.meta, fractions=(0.5, 0.1, 0.1))
