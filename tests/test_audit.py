"""Leakage audit and near-duplicate-aware splitting (issue: formats and audit)."""

from __future__ import annotations

import io
import re
import shutil

import pandas as pd
from PIL import Image

from .conftest import shared


def test_audit_of_the_real_metadata_flags_the_image_split_with_the_count_split_reported(run_cli, tmp_path):
    meta = shared("HAM10000_metadata.csv")
    code, out, err = run_cli("split", meta, "--kind", "image", "--out", tmp_path / "image.csv")
    assert code == 0, err
    leaked = int(re.search(r"test images with a sibling image of the same lesion in train: (\d+)", out).group(1))
    assert leaked > 500
    code, out, err = run_cli("audit", meta, "--split", tmp_path / "image.csv", "--out", tmp_path / "pairs.csv")
    assert code == 1, out + err
    assert f"test images with a sibling image of the same lesion in train: {leaked}" in out
    assert "optimistic" in err and "not checked" in out  # a metadata CSV has no pixels to compare
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    test_pairs = pairs[(pairs["kind"] == "lesion") & (pairs["split_a"] == "train") & (pairs["split_b"] == "test")]
    assert test_pairs["image_b"].nunique() == leaked
    assert (test_pairs["lesion_id_a"] == test_pairs["lesion_id_b"]).all()
    code, out, err = run_cli("split", meta, "--out", tmp_path / "lesion.csv")
    code, out, err = run_cli("audit", meta, "--split", tmp_path / "lesion.csv")
    assert code == 0, out + err
    assert "test images with a sibling image of the same lesion in train: 0" in out


def _real_subset(tmp_path, n=400):
    """The first ``n`` real DermaMNIST images (28 px), less any that already has a near-duplicate under another lesion."""

    from skinlesion.data import load_dataset
    from skinlesion.data.audit import image_hashes, near_duplicate_pairs

    src = shared("dermamnist28")
    meta = pd.read_csv(src / "HAM10000_metadata.csv")
    have = {p.stem for p in (src / "images").glob("*.jpg")}
    meta = meta[meta["image_id"].isin(have)].head(n).reset_index(drop=True)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for iid in meta["image_id"]:
        shutil.copy(src / "images" / f"{iid}.jpg", root / "images" / f"{iid}.jpg")
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    pairs = near_duplicate_pairs(image_hashes(load_dataset(root)), 2)
    lesion = meta["lesion_id"].to_numpy()
    drop = {int(k) for i, j, _ in pairs if lesion[i] != lesion[j] for k in (i, j)}
    for k in drop:
        (root / "images" / f"{meta['image_id'][k]}.jpg").unlink()
    meta.drop(index=sorted(drop)).to_csv(root / "HAM10000_metadata.csv", index=False)
    assert len(meta) - len(drop) > 300
    return root


def _plant(root, tmp_path, run_cli):
    """A lesion split of ``root``, then a re-encoded, resized copy of one test image planted in train under a new lesion id."""
    code, out, err = run_cli("split", root, "--out", tmp_path / "split.csv")
    assert code == 0, err
    m = pd.read_csv(tmp_path / "split.csv")
    victim = m[m["split"] == "test"].iloc[0]
    src = next(root.rglob(f"{victim['image_id']}.jpg"))
    img = Image.open(src).convert("RGB")
    buf = io.BytesIO()
    img.resize((img.width * 2, img.height * 2), Image.BICUBIC).save(buf, "JPEG", quality=70)  # upsampled and re-encoded
    copy_id = "ISIC_9000001"
    (src.parent / f"{copy_id}.jpg").write_bytes(buf.getvalue())
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    row = meta[meta["image_id"] == victim["image_id"]].iloc[0].to_dict()
    meta = pd.concat([meta, pd.DataFrame([{**row, "image_id": copy_id, "lesion_id": "HAM_9000001"}])], ignore_index=True)
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    m = pd.concat([m, pd.DataFrame([{"image_id": copy_id, "lesion_id": "HAM_9000001", "dx": victim["dx"], "split": "train"}])])
    m.to_csv(tmp_path / "planted.csv", index=False)
    return root, victim["image_id"], copy_id


def test_audit_finds_a_planted_near_duplicate_across_splits_and_dedup_keeps_it_together(run_cli, tmp_path):
    root, original, copy_id = _plant(_real_subset(tmp_path), tmp_path, run_cli)
    code, out, err = run_cli("audit", root, "--split", tmp_path / "split.csv")
    assert code == 0, out + err  # the clean lesion split: nothing shared, no near-duplicate
    code, out, err = run_cli("audit", root, "--split", tmp_path / "planted.csv", "--out", tmp_path / "pairs.csv")
    assert code == 1, out + err
    assert "test images with a near-duplicate in train (pHash within 2 bits, another lesion): 1" in out
    near = pd.read_csv(tmp_path / "pairs.csv").query("kind == 'near-duplicate'")
    assert list(zip(near["image_a"], near["image_b"])) == [(copy_id, original)]
    assert near["split_a"].tolist() == ["train"] and near["split_b"].tolist() == ["test"]
    # split --dedup puts the copy and its original in one split, and says how many images it regrouped
    code, out, err = run_cli("split", root, "--dedup", "--out", tmp_path / "dedup.csv")
    assert code == 0, err
    assert re.search(r"--dedup: \d+ near-duplicate pair\(s\) within 2 bits; [1-9]\d* images regrouped", out), out
    d = pd.read_csv(tmp_path / "dedup.csv").set_index("image_id")
    assert d.loc[copy_id, "split"] == d.loc[original, "split"]
    assert d.loc[copy_id, "lesion_id"] == "HAM_9000001"  # the manifest keeps the true lesion ids
    code, out, err = run_cli("audit", root, "--split", tmp_path / "dedup.csv")
    assert code == 0, out + err
    code, out, err = run_cli("audit", root, "--split", tmp_path / "dedup.csv", "--max-distance", "99")
    assert code == 2 and "--max-distance" in err
