"""Several datasets as one (issue 21): one label set, each image once by id and by near-duplicate hash,
lesions kept together, and the drops said."""

from __future__ import annotations

import io
import shutil

import pandas as pd
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A: a synthetic HAM10000 folder. B: 10 of A's images under the same ids, one of A's images re-encoded and
    resized under a new id and lesion (the same picture), and 20 images of its own."""
    from skinlesion.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("combine")
    a = write_synthetic(root / "a", n_lesions=30, layout="flat", size=(96, 72), seed=1)
    own = write_synthetic(root / "own", n_lesions=14, layout="flat", size=(96, 72), seed=2)
    b = root / "b"
    (b / "images").mkdir(parents=True)
    meta_a = pd.read_csv(a / "HAM10000_metadata.csv")
    shared = meta_a.iloc[:10]
    for iid in shared["image_id"]:
        shutil.copy(a / "images" / f"{iid}.jpg", b / "images" / f"{iid}.jpg")
    copy_of = meta_a.iloc[20]
    buf = io.BytesIO()
    Image.open(a / "images" / f"{copy_of['image_id']}.jpg").resize((120, 90)).save(buf, "JPEG", quality=80)
    (b / "images" / "ISIC_9000001.jpg").write_bytes(buf.getvalue())
    copy_row = {**copy_of.to_dict(), "image_id": "ISIC_9000001", "lesion_id": "HAM_9000001"}
    meta_own = pd.read_csv(own / "HAM10000_metadata.csv").iloc[:20].copy()
    new_ids = [f"ISIC_8{i:06d}" for i in range(len(meta_own))]
    for old, new in zip(meta_own["image_id"], new_ids):
        shutil.copy(own / "images" / f"{old}.jpg", b / "images" / f"{new}.jpg")
    meta_own["image_id"] = new_ids
    meta_own["lesion_id"] = [f"OWN_{lid}" for lid in meta_own["lesion_id"]]
    pd.concat([shared, pd.DataFrame([copy_row]), meta_own]).to_csv(b / "HAM10000_metadata.csv", index=False)
    return a, b, len(meta_a)


def test_each_image_counts_once_by_id_and_by_near_duplicate_hash(two):
    from skinlesion.data import load_dataset

    a, b, n_a = two
    ds = load_dataset([a, b])
    assert len(ds) == n_a + 20  # B's ten shared ids and its re-encoded copy are dropped
    assert ds.meta["image_id"].is_unique and "ISIC_9000001" not in set(ds.meta["image_id"])
    assert ds.meta["dataset"].value_counts().to_dict() == {str(a): n_a, str(b): 20}
    said = ds.warnings[-1]
    assert f"{b}: 31 images, dropped 10 already in an earlier dataset by id; 1 near-duplicates" in said, said
    for i in (0, len(ds) - 1):  # the pixels of each row come from its own dataset's file
        assert ds.image(i).size == (96, 72)


def test_split_and_train_run_on_the_combination(two, run_cli, tmp_path):
    a, b, n_a = two
    code, out, err = run_cli("split", a, b, "--out", tmp_path / "split.csv", "--train", "0.6", "--val", "0.2", "--test", "0.2")
    assert code == 0, err
    manifest = pd.read_csv(tmp_path / "split.csv")
    assert len(manifest) == n_a + 20 and "combined" in err
    assert manifest.groupby("lesion_id")["split"].nunique().max() == 1  # lesions stay in one split across datasets
    code, _, err = run_cli(
        "train", a, b, "--split", tmp_path / "split.csv", "--out", tmp_path / "run", "--backbone", "resnet18",
        "--input-size", "32", "--epochs", "1", "--batch-size", "16", "--no-progress", "--num-workers", "0",
    )  # fmt: skip
    assert code == 0, err
    assert f"warning: combined {a}: {n_a} images | {b}: 31 images, dropped 10" in err, err  # as info and split say it
    import json

    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == [str(a), str(b)]
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["val_n"].iloc[0] == int((manifest["split"] == "val").sum())


def test_a_cache_or_npz_cannot_be_combined(two, tmp_path, run_cli):
    import numpy as np

    a, _, _ = two
    np.savez(tmp_path / "d.npz", train_images=np.zeros((2, 28, 28, 3), np.uint8), train_labels=np.array([0, 1]))
    code, _, err = run_cli("info", a, tmp_path / "d.npz", "--quick")
    assert code == 2 and "cannot be combined with other datasets" in err and "Traceback" not in err


def test_external_validation_maps_the_data_classes_and_reports_what_it_left_out(tmp_path):
    import numpy as np

    from skinlesion.classes import HAM10000, ISIC2019, MELANOMA
    from skinlesion.data.ham10000 import Dataset
    from skinlesion.errors import SkinLesionError
    from skinlesion.evaluate import map_labels

    codes = ["mel", "nv", "ak", "scc", "bcc", "bkl", "df", "vasc", "ak"]
    meta = pd.DataFrame({"image_id": [f"i{k}" for k in range(len(codes))], "dx": codes, "label": [ISIC2019.index(c) for c in codes]})
    ds = Dataset(root=tmp_path, layout="folder", meta=meta, label_set=ISIC2019)
    pos, labels, info = map_labels(ds, np.arange(len(codes)), HAM10000)
    assert info["n_unmapped"] == 0 and [HAM10000.codes[i] for i in labels] == [
        "mel",
        "nv",
        "akiec",
        "akiec",
        "bcc",
        "bkl",
        "df",
        "vasc",
        "akiec",
    ]
    (tmp_path / "map.csv").write_text("from,to\nscc,\n")  # say: SCC has no counterpart here
    pos, labels, info = map_labels(ds, np.arange(len(codes)), HAM10000, tmp_path / "map.csv")
    assert info["unmapped"] == {"scc": 1} and info["n_mapped"] == 8 and 3 not in pos
    _, labels, info = map_labels(ds, np.arange(len(codes)), MELANOMA)
    assert [MELANOMA.codes[i] for i in labels] == ["mel"] + ["other"] * 8
    (tmp_path / "bad.csv").write_text("from,to\nak,actinic\n")
    with pytest.raises(SkinLesionError, match="'actinic' is not a class of the model's ham10000 label set"):
        map_labels(ds, np.arange(len(codes)), HAM10000, tmp_path / "bad.csv")


# ---- issue 28: conflicts said, a dataset given twice, an ambiguous mapping ------------------------------


@pytest.fixture(scope="module")
def conflicting(two, tmp_path_factory):
    """B again, with two of its ten ids shared with A relabelled (the same image, another diagnosis)."""
    a, b, n_a = two
    c = tmp_path_factory.mktemp("conflict") / "c"
    shutil.copytree(b, c)
    meta = pd.read_csv(c / "HAM10000_metadata.csv")
    meta_a = pd.read_csv(a / "HAM10000_metadata.csv").set_index("image_id")["dx"]
    for k in (0, 1):
        meta.loc[k, "dx"] = "vasc" if meta_a[meta.loc[k, "image_id"]] != "vasc" else "df"
    meta.to_csv(c / "HAM10000_metadata.csv", index=False)
    return a, c, n_a, meta.loc[[0, 1], "image_id"].tolist()


def test_the_same_image_with_another_diagnosis_is_a_conflict_counted_and_named(conflicting):
    from skinlesion.data import load_dataset
    from skinlesion.data.combine import combine

    a, c, n_a, ids = conflicting
    ds = load_dataset([a, c])
    said = ds.warnings[-1]
    assert "2 of them with another diagnosis, a label conflict" in said and ids[0] in said and "earlier label kept" in said, said
    first = pd.read_csv(a / "HAM10000_metadata.csv").set_index("image_id")["dx"]
    kept = ds.meta.set_index("image_id")["dx"]
    assert all(kept[i] == first[i] for i in ids)  # the first dataset's label
    dropped = combine([load_dataset(a), load_dataset(c)], [str(a), str(c)], on_conflict="drop")
    assert not set(ids) & set(dropped.meta["image_id"]) and len(dropped) == len(ds) - 2
    assert "left out of both" in dropped.warnings[-1]


def test_on_conflict_from_the_command_line_names_the_conflicts_and_keeps_or_drops_them(conflicting, run_cli, tmp_path):
    """Issue 28: `--on-conflict keep-first|drop` where datasets combine (info, split, audit, train)."""
    a, c, n_a, ids = conflicting
    code, _, err = run_cli("info", a, c, "--quick")
    assert code == 0 and "2 of them with another diagnosis, a label conflict" in err and ids[0] in err and "earlier label kept" in err, err
    code, _, err = run_cli("split", a, c, "--on-conflict", "drop", "--out", tmp_path / "drop.csv")
    assert code == 0 and "left out of both" in err and ids[1] in err, err
    dropped = pd.read_csv(tmp_path / "drop.csv")
    code, _, _ = run_cli("split", a, c, "--on-conflict", "keep-first", "--out", tmp_path / "keep.csv")
    kept = pd.read_csv(tmp_path / "keep.csv").set_index("image_id")["dx"]
    assert code == 0 and not set(ids) & set(dropped["image_id"]) and len(dropped) == len(kept) - 2
    first = pd.read_csv(a / "HAM10000_metadata.csv").set_index("image_id")["dx"]
    assert all(kept[i] == first[i] for i in ids)
    for args in (["info", a, "--on-conflict", "drop", "--quick"], ["split", a, "--on-conflict", "drop", "--out", tmp_path / "x.csv"]):
        code, _, err = run_cli(*args)  # one dataset: nothing combines, so the option is refused, never ignored
        assert code == 2 and "give two or more DATA" in err and "Traceback" not in err, err
    code, _, err = run_cli("train", a, "--on-conflict", "drop", "--split", tmp_path / "keep.csv", "--out", tmp_path / "r")
    assert code == 2 and "give two or more DATA" in err and not (tmp_path / "r").exists(), err
    code, _, err = run_cli("info", a, c, "--on-conflict", "first")
    assert code == 2 and "--on-conflict" in err and "Traceback" not in err, err


def test_a_class_without_training_images_is_said_by_split_and_by_the_training_warnings(two, run_cli, tmp_path):
    """Issue 28: a label set's class with no training image (an 8-class ISIC 2019 model with 0 scc) is warned of."""
    from skinlesion.data import load_dataset
    from skinlesion.data.describe import training_warnings

    a, _, _ = two
    d = tmp_path / "no_df"
    shutil.copytree(a, d)
    meta = pd.read_csv(d / "HAM10000_metadata.csv")
    meta[meta["dx"] != "df"].to_csv(d / "HAM10000_metadata.csv", index=False)
    code, _, err = run_cli("split", d, "--out", tmp_path / "s.csv")
    assert code == 0 and "1 of the 7 classes of the ham10000 label set have no training image (df)" in err, err
    ds = load_dataset(d)
    said = training_warnings(ds, range(len(ds)))  # the readers' warnings first, as info and split print them
    assert said[:-1] == ds.warnings and "have no training image (df)" in said[-1], said
    whole = load_dataset(a)
    assert training_warnings(whole, range(len(whole))) == whole.warnings  # every class present: nothing more to say


def test_the_same_dataset_given_twice_is_refused_as_such(two, run_cli):
    a, _, _ = two
    code, out, err = run_cli("info", a, str(a) + "/", "--quick")
    assert code == 2 and "given twice" in err and "duplicates" not in err and "Traceback" not in err, err


def test_a_mapping_that_maps_a_class_twice_is_refused(tmp_path):
    from skinlesion.classes import HAM10000, ISIC2019, read_mapping
    from skinlesion.errors import SkinLesionError

    (tmp_path / "twice.csv").write_text("from,to\nscc,akiec\nak,akiec\nSCC,\n")
    with pytest.raises(SkinLesionError, match=r"maps 'scc' more than once \(rows 2, 4\), so the mapping is ambiguous"):
        read_mapping(tmp_path / "twice.csv", ISIC2019, HAM10000)
