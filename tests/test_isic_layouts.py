"""The ISIC layouts as downloaded (issue 21, item 1): ISIC 2019, ISIC 2020 and isic-cli exports, found by their
columns, read to the right labels, groups and metadata; every bad file refused in one sentence with exit 2; and
the real DermaMNIST images written out in the ISIC 2019 layout read back exactly as the HAM10000 reader reads them."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinlesion.classes import ISIC2019, MELANOMA
from skinlesion.data import load_dataset
from skinlesion.data.isic_layouts import read_isic_cli, read_table
from skinlesion.data.synthetic import write_isic2019, write_isic2020, write_isic_cli

from .conftest import shared

SMALL = (48, 36)
# what the readers must make of the ISIC site vocabularies, written out here rather than taken from the module
SITE_2019 = {
    "anterior torso": "trunk",
    "posterior torso": "back",
    "lateral torso": "trunk",
    "upper extremity": "upper extremity",
    "lower extremity": "lower extremity",
    "palms/soles": "acral",
    "oral/genital": "genital",
    "head/neck": "unknown",
}
SITE_2020 = {**SITE_2019, "torso": "trunk"}
# the deepest ISIC Archive diagnosis the synthetic export uses, per ISIC 2019 class
ARCHIVE_CODE = {
    "Melanoma Invasive": "mel",
    "Melanoma in situ": "mel",
    "Nevus": "nv",
    "Blue nevus": "nv",
    "Basal cell carcinoma": "bcc",
    "Solar or actinic keratosis": "ak",
    "Seborrheic keratosis": "bkl",
    "Solar lentigo": "bkl",
    "Pigmented benign keratosis": "bkl",
    "Dermatofibroma": "df",
    "Hemangioma": "vasc",
    "Angiokeratoma": "vasc",
    "Squamous cell carcinoma in situ": "scc",
}


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == ""


def _by_id(ds) -> pd.DataFrame:
    return ds.meta.set_index("image_id")


@pytest.fixture(scope="module")
def isic2019(tmp_path_factory) -> Path:
    return write_isic2019(tmp_path_factory.mktemp("isic2019"), n_lesions=30, size=SMALL, seed=2, unknown=2)


@pytest.fixture(scope="module")
def isic2020(tmp_path_factory) -> Path:
    return write_isic2020(tmp_path_factory.mktemp("isic2020"), n_patients=12, size=SMALL, seed=3, duplicates=3)


@pytest.fixture(scope="module")
def isic_cli(tmp_path_factory) -> Path:
    return write_isic_cli(tmp_path_factory.mktemp("isic_cli"), n_lesions=25, size=SMALL, seed=4, unlabelled=3)


# ---- ISIC 2019 ------------------------------------------------------------------------------------


def test_isic2019_reads_one_hot_labels_lesions_and_metadata(isic2019, run_cli):
    gt = pd.read_csv(isic2019 / "ISIC_2019_Training_GroundTruth.csv")
    md = pd.read_csv(isic2019 / "ISIC_2019_Training_Metadata.csv", dtype={"lesion_id": str})
    assert list(gt.columns) == ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    assert list(md.columns) == ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
    assert (isic2019 / "ISIC_2019_Training_Input" / "LICENSE.txt").exists()
    unk = set(gt.loc[gt["UNK"] == 1, "image"])
    assert len(unk) == 2 and md["lesion_id"].isna().any() and gt["image"].str.endswith("_downsampled").any()

    ds = load_dataset(isic2019)
    assert ds.layout == "isic2019" and ds.label_set == ISIC2019
    got = _by_id(ds)
    assert set(got.index) == set(gt["image"]) - unk  # UNK rows left out
    for row in gt[~gt["image"].isin(unk)].itertuples(index=False):
        code = [c for c in ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC") if getattr(row, c) == 1.0][0].lower()
        assert got.loc[row.image, "dx"] == code and got.loc[row.image, "label"] == ISIC2019.codes.index(code)
    for row in md[~md["image"].isin(unk)].itertuples(index=False):
        r = got.loc[row.image]
        assert r["lesion_id"] == (row.image if _blank(row.lesion_id) else row.lesion_id)  # no lesion id: its own group
        if _blank(row.lesion_id):
            assert pd.isna(r["source"])
        else:  # the contributing collection, from the lesion id's prefix
            assert r["source"] == {"HAM": "HAM", "BCN": "BCN", "MSK4": "MSK"}[row.lesion_id.split("_")[0]]
        assert (np.isnan(r["age"]) and _blank(row.age_approx)) or r["age"] == row.age_approx
        assert r["sex"] == ("unknown" if _blank(row.sex) else row.sex)
        assert r["localization"] == ("unknown" if _blank(row.anatom_site_general) else SITE_2019[row.anatom_site_general])
        assert Path(r["path"]) == isic2019 / "ISIC_2019_Training_Input" / f"{row.image}.jpg"
    no_lesion = int(md.loc[~md["image"].isin(unk), "lesion_id"].isna().sum())
    assert any(f"{len(unk)} marked UNK" in w for w in ds.warnings)
    assert any(w.startswith(f"{no_lesion} of {len(got)} images") and "own lesion" in w for w in ds.warnings)
    assert got["lesion_id"].value_counts().max() > 1  # real multi-image lesions survive

    # either CSV file itself reads the same; read_table reads labels and metadata without the images
    for csv in ("ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"):
        assert load_dataset(isic2019 / csv).meta.equals(ds.meta)
    table = read_table(isic2019 / "ISIC_2019_Training_GroundTruth.csv")
    assert "path" not in table.meta.columns and table.meta.equals(ds.meta.drop(columns=["path"]))

    code, out, err = run_cli("info", isic2019)
    assert code == 0, err
    assert "layout: isic2019" in out and "label set: isic2019 (8 classes" in out
    counts = got["dx"].value_counts()
    for c in ISIC2019.codes:
        assert any(line.split()[:2] == [c, str(counts.get(c, 0))] for line in out.splitlines()), c
    assert f"lesions: {got['lesion_id'].nunique()}" in out and "source" in out


# ---- ISIC 2020 ------------------------------------------------------------------------------------


def test_isic2020_groups_by_patient_and_keeps_one_of_each_duplicate(isic2020, run_cli, tmp_path):
    t = pd.read_csv(isic2020 / "train.csv")
    dups = pd.read_csv(isic2020 / "ISIC_2020_Training_Duplicates.csv")
    assert list(t.columns) == [
        "image_name",
        "patient_id",
        "sex",
        "age_approx",
        "anatom_site_general_challenge",
        "diagnosis",
        "benign_malignant",
        "target",
    ]
    assert list(dups.columns) == ["image_name_1", "image_name_2"] and len(dups) == 3
    ds = load_dataset(isic2020)
    assert ds.layout == "isic2020" and ds.label_set == MELANOMA
    got = _by_id(ds)
    assert set(got.index) == set(t["image_name"]) - set(dups["image_name_2"])  # one image of each pair kept
    assert any("3 duplicate images" in w for w in ds.warnings)
    for row in t[~t["image_name"].isin(dups["image_name_2"])].itertuples(index=False):
        r = got.loc[row.image_name]
        assert r["dx"] == ("mel" if row.target == 1 else "other") and r["label"] == MELANOMA.codes.index(r["dx"])
        assert r["lesion_id"] == row.patient_id == r["patient_id"]  # splits and folds group by patient
        assert r["localization"] == (
            "unknown" if _blank(row.anatom_site_general_challenge) else SITE_2020[row.anatom_site_general_challenge]
        )
        assert r["diagnosis"] == row.diagnosis and Path(r["path"]) == isic2020 / "train" / f"{row.image_name}.jpg"
    assert got["lesion_id"].value_counts().max() > 1

    # chained pairs form one group of which only the first listed image stays
    chained = tmp_path / "chained"
    shutil.copytree(isic2020, chained)
    a, b, c = t["image_name"].iloc[[0, 1, 2]]
    pd.DataFrame({"image_name_1": [a, c], "image_name_2": [b, b]}).to_csv(chained / "ISIC_2020_Training_Duplicates.csv", index=False)
    ids = set(load_dataset(chained).meta["image_id"])
    assert a in ids and b not in ids and c not in ids

    # Kaggle's layout: DICOMs in train/, JPEGs in jpeg/train/, the unlabelled test.csv and a sample submission beside
    kaggle = tmp_path / "kaggle"
    shutil.copytree(isic2020, kaggle)
    (kaggle / "jpeg").mkdir()
    shutil.move(kaggle / "train", kaggle / "jpeg" / "train")
    (kaggle / "train").mkdir()
    (kaggle / "train" / f"{a}.dcm").write_bytes(b"DICM")
    t.drop(columns=["diagnosis", "benign_malignant", "target"]).head(3).to_csv(kaggle / "test.csv", index=False)
    t[["image_name", "target"]].head(3).to_csv(kaggle / "sample_submission.csv", index=False)
    k = load_dataset(kaggle)
    assert k.meta.drop(columns=["path"]).equals(ds.meta.drop(columns=["path"]))
    assert all(Path(p).parent == kaggle / "jpeg" / "train" for p in k.meta["path"])

    code, out, err = run_cli("info", isic2020)
    assert code == 0, err
    assert "label set: melanoma" in out and f"patients: {got['lesion_id'].nunique()} (lesion_id holds the patient id" in out
    assert "3 duplicate images" in err


# ---- isic-cli -----------------------------------------------------------------------------------


def _expected_code(row) -> str | None:
    for level in ("diagnosis_5", "diagnosis_4", "diagnosis_3", "diagnosis_2", "diagnosis_1"):
        if getattr(row, level) in ARCHIVE_CODE:
            return ARCHIVE_CODE[getattr(row, level)]
    return None


def test_isic_cli_export_takes_the_most_specific_mapped_diagnosis(isic_cli, run_cli):
    t = pd.read_csv(isic_cli / "metadata.csv")
    assert list(t.columns[:3]) == ["isic_id", "attribution", "copyright_license"]
    assert list(t.columns[3:]) == sorted(t.columns[3:])  # isic-cli writes the metadata fields in alphabetical order
    assert {f"diagnosis_{k}" for k in range(1, 6)} <= set(t.columns) and (isic_cli / "attribution.txt").exists()
    assert (isic_cli / "licenses").is_dir() and (isic_cli / f"{t['isic_id'][0]}.jpg").exists()
    expected = {row.isic_id: _expected_code(row) for row in t.itertuples(index=False)}
    unlabelled = [i for i, c in expected.items() if c is None]
    assert len(unlabelled) >= 3

    ds = load_dataset(isic_cli)
    assert ds.layout == "isic-cli" and ds.label_set == ISIC2019
    got = _by_id(ds)
    assert set(got.index) == {i for i, c in expected.items() if c is not None}
    assert (got["dx"] == pd.Series(expected).loc[got.index]).all()
    assert (got["label"] == [ISIC2019.codes.index(c) for c in got["dx"]]).all()
    warning = next(w for w in ds.warnings if "have no diagnosis that the isic2019 label set names" in w)
    assert warning.startswith(f"{len(unlabelled)} of {len(t)} images") and ", ".join(unlabelled[:5]) in warning
    src = t.set_index("isic_id").loc[got.index]
    assert (got["attribution"] == src["attribution"]).all() and (got["copyright_license"] == src["copyright_license"]).all()
    assert (got["source"] == src["attribution"]).all()
    group = src["lesion_id"].fillna(src["patient_id"]).fillna(pd.Series(src.index, index=src.index))
    assert (got["lesion_id"] == group).all()  # lesion, else patient, else the image itself
    site = src["anatom_site_general"].map(SITE_2019).fillna("unknown")
    assert (got["localization"] == site).all()

    # another label set: melanoma vs other, where "Benign" alone now says enough
    mel = _by_id(read_isic_cli(isic_cli / "metadata.csv", label_set="melanoma"))
    assert mel.loc[mel.index.isin(got.index), "dx"].eq(got["dx"].map(lambda c: "mel" if c == "mel" else "other")).all()
    only_benign = t.loc[t["diagnosis_2"].isna() & (t["diagnosis_1"] == "Benign"), "isic_id"]
    assert set(only_benign) <= set(mel.index) and (mel.loc[list(only_benign), "dx"] == "other").all()
    assert not any(t.loc[t["diagnosis_3"] == "Atypical Spitz tumor", "isic_id"].isin(mel.index))

    code, out, err = run_cli("info", isic_cli)
    assert code == 0, err
    assert "layout: isic-cli" in out and "copyright_license" in out and unlabelled[0] in err


def test_isic_cli_hierarchical_sites_map_the_most_specific_level(tmp_path):
    root = write_isic_cli(tmp_path / "h", n_lesions=20, size=SMALL, seed=6, unlabelled=0, sites="hierarchical")
    t = pd.read_csv(root / "metadata.csv").set_index("isic_id")
    assert "anatom_site_general" not in t.columns and {f"anatom_site_{k}" for k in range(1, 6)} <= set(t.columns)
    deepest = {
        ("Trunk", "Posterior trunk", "Upper back"): "back",
        ("Trunk", "Anterior trunk", "Anterior chest"): "chest",
        ("Upper extremity", "Forearm", "Dorsal forearm"): "upper extremity",  # no HAM10000 forearm: the level above
        ("Lower extremity", "Foot", "Sole of foot"): "acral",
        ("Head and neck", "Head", "Face"): "face",
        ("Head and neck",): "unknown",  # HAM10000 has no head-or-neck
    }
    ds = load_dataset(root)
    for image_id, r in _by_id(ds).iterrows():
        levels = tuple(v for v in t.loc[image_id, ["anatom_site_1", "anatom_site_2", "anatom_site_3"]] if not _blank(v))
        assert r["localization"] == deepest[levels], (image_id, levels)


# ---- bad files ------------------------------------------------------------------------------------


def _csv_edit(name: str, edit):
    def apply(root: Path):
        t = pd.read_csv(root / name, dtype=str)
        changed = edit(t, root)
        (t if changed is None else changed).to_csv(root / name, index=False)

    return apply


def _set(col, value, row=0):
    return lambda t, root: t.__setitem__(col, [value if i == row else v for i, v in enumerate(t[col])])


def _drop_col(col):
    return lambda t, root: t.drop(columns=[col])


def _dup_first(col):
    return lambda t, root: t.__setitem__(col, [t[col].iat[0] if i == 1 else v for i, v in enumerate(t[col])])


def _write(name: str, text: str | bytes):
    def apply(root: Path):
        p = root / name
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)

    return apply


def _remove(name: str):
    return lambda root: (root / name).unlink()


def _first_image_gone(folder: str, table: str, column: str, labelled=lambda t: t.index >= 0):
    """Delete the image of the table's first row that the reader keeps (a labelled one)."""

    def apply(root: Path):
        t = pd.read_csv(root / table, dtype=str)
        first = t.loc[labelled(t), column].iat[0]
        (root / folder / f"{first}.jpg").unlink()

    return apply


def _labelled_2019(t):
    return t["UNK"] != "1.0"


def _labelled_cli(t):
    return [_expected_code(row) is not None for row in t.itertuples(index=False)]


def _set_all(col, value):
    return lambda t, root: t.__setitem__(col, value)


def _two_classes(t, root):
    t.loc[0, "MEL"], t.loc[0, "NV"] = "1.0", "1.0"


def _all_unknown(t, root):
    for c in ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"):
        t[c] = "0.0"
    t["UNK"] = "1.0"


def _other_images(t, root):
    t["image"] = [f"ISIC_99{i:05d}" for i in range(len(t))]


def _test_set(t, root):  # ISIC 2020's test.csv: the same table without its labels
    return t.drop(columns=["diagnosis", "benign_malignant", "target"])


def _contradiction(t, root):
    t.loc[t["target"] == "0", "benign_malignant"] = "malignant"


def _foreign_duplicates(t, root):
    t["image_name_1"], t["image_name_2"] = "ISIC_0000001", "ISIC_0000002"


def _nothing_mapped(t, root):
    for c in ("diagnosis_2", "diagnosis_3", "diagnosis_4", "diagnosis_5"):
        t[c] = ""
    t["diagnosis_1"] = "Malignant"


def _mixed(root):
    write_isic2020(root / "other", n_patients=2, size=(16, 12), duplicates=0)
    shutil.copy(root / "other" / "train.csv", root / "train.csv")


GT19, MD19 = "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"
# (case, dataset, change to a fresh copy, the argument to `info` (relative to the copy), phrases the one sentence must hold)
BAD = [
    ("2019-missing-column", "isic2019", _csv_edit(GT19, _drop_col("SCC")), ".", ["lacks the column(s) SCC"]),
    ("2019-two-classes", "isic2019", _csv_edit(GT19, _two_classes), ".", ["not one-hot", "MEL, NV"]),
    ("2019-half-a-class", "isic2019", _csv_edit(GT19, _set("BCC", "0.5")), ".", ["not one-hot", "BCC=0.5"]),
    ("2019-not-a-number", "isic2019", _csv_edit(GT19, _set("NV", "yes")), ".", ["not one-hot", "NV=yes"]),
    ("2019-duplicate-image", "isic2019", _csv_edit(GT19, _dup_first("image")), ".", ["1 duplicate image(s)"]),
    ("2019-all-unknown", "isic2019", _csv_edit(GT19, _all_unknown), ".", ["None of the", "none can be labelled"]),
    ("2019-unreadable", "isic2019", _write(GT19, 'image,MEL\n"ISIC_1,1.0\n'), ".", ["not a readable CSV file"]),
    ("2019-empty", "isic2019", _write(GT19, b""), ".", [GT19, "is empty"]),
    ("2019-csv-is-empty", "isic2019", _write(GT19, b""), GT19, [GT19, "is empty"]),
    ("2019-no-ground-truth", "isic2019", _remove(GT19), ".", [MD19, "without labels"]),
    ("2019-metadata-of-other-images", "isic2019", _csv_edit(MD19, _other_images), ".", ["describes none of the images"]),
    ("2019-bad-age", "isic2019", _csv_edit(MD19, _set_all("age_approx", "fifty")), ".", ["age_approx", "'fifty'"]),
    ("2019-age-200", "isic2019", _csv_edit(MD19, _set_all("age_approx", "200")), ".", ["not ages from 0 to 120", "'200'"]),
    ("2019-duplicate-metadata", "isic2019", _csv_edit(MD19, _dup_first("image")), ".", [MD19, "duplicate image(s)"]),
    (
        "2019-missing-image",
        "isic2019",
        _first_image_gone("ISIC_2019_Training_Input", GT19, "image", _labelled_2019),
        ".",
        ["1 of", "missing", "--allow-missing"],
    ),
    (
        "2020-missing-column",
        "isic2020",
        _csv_edit("train.csv", _drop_col("benign_malignant")),
        ".",
        ["lacks the column(s) benign_malignant"],
    ),
    ("2020-target-2", "isic2020", _csv_edit("train.csv", _set("target", "2")), ".", ["target is not 0 or 1"]),
    ("2020-contradiction", "isic2020", _csv_edit("train.csv", _contradiction), ".", ["contradicts target"]),
    ("2020-unknown-benign-malignant", "isic2020", _csv_edit("train.csv", _set("benign_malignant", "maybe")), ".", ["'maybe'"]),
    ("2020-test-set", "isic2020", _csv_edit("train.csv", _test_set), "train.csv", ["test set", "without labels"]),
    ("2020-duplicate-image", "isic2020", _csv_edit("train.csv", _dup_first("image_name")), ".", ["duplicate image_name(s)"]),
    ("2020-duplicates-as-data", "isic2020", lambda root: None, "ISIC_2020_Training_Duplicates.csv", ["not a dataset"]),
    (
        "2020-foreign-duplicates",
        "isic2020",
        _csv_edit("ISIC_2020_Training_Duplicates.csv", _foreign_duplicates),
        ".",
        ["lists none of the images"],
    ),
    ("2020-missing-image", "isic2020", _first_image_gone("train", "train.csv", "image_name"), ".", ["missing", "--allow-missing"]),
    (
        "cli-missing-column",
        "isic_cli",
        _csv_edit("metadata.csv", _drop_col("copyright_license")),
        ".",
        ["lacks the column(s) copyright_license"],
    ),
    (
        "cli-no-diagnosis",
        "isic_cli",
        _csv_edit("metadata.csv", lambda t, r: t.drop(columns=[f"diagnosis_{k}" for k in range(1, 6)])),
        ".",
        ["no diagnosis columns"],
    ),
    ("cli-unknown-diagnosis", "isic_cli", _csv_edit("metadata.csv", _set("diagnosis_1", "Maybe")), ".", ["unknown diagnosis_1", "'Maybe'"]),
    ("cli-duplicate-id", "isic_cli", _csv_edit("metadata.csv", _dup_first("isic_id")), ".", ["duplicate isic_id(s)"]),
    ("cli-nothing-mapped", "isic_cli", _csv_edit("metadata.csv", _nothing_mapped), ".", ["None of the", "isic2019 label set"]),
    (
        "cli-missing-image",
        "isic_cli",
        _first_image_gone(".", "metadata.csv", "isic_id", _labelled_cli),
        ".",
        ["missing", "--allow-missing"],
    ),
    ("mixed-layouts", "isic2019", _mixed, ".", ["more than one ISIC layout"]),
]


@pytest.mark.parametrize("case, dataset, change, arg, phrases", BAD, ids=[b[0] for b in BAD])
def test_bad_isic_files_are_refused_in_one_sentence(case, dataset, change, arg, phrases, request, run_cli, tmp_path):
    root = shutil.copytree(request.getfixturevalue(dataset), tmp_path / "data")
    change(root)
    code, out, err = run_cli("info", root / arg)
    assert code == 2, (out, err)
    assert "Traceback" not in err and "unexpected" not in err.lower()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), err
    assert not re.search(r"\.\s+[A-Z]", lines[0][len("error: ") :]), err  # one sentence
    for phrase in phrases:
        assert phrase in lines[0], (phrase, err)


def test_allow_missing_drops_the_missing_images_with_a_warning(isic2019, run_cli, tmp_path):
    root = shutil.copytree(isic2019, tmp_path / "data")
    _first_image_gone("ISIC_2019_Training_Input", GT19, "image", _labelled_2019)(root)
    code, out, err = run_cli("info", root, "--allow-missing", "--quick")
    assert code == 0, err
    assert "1 of" in err and "dropped (--allow-missing)" in err
    assert len(load_dataset(root, allow_missing=True)) == len(load_dataset(isic2019)) - 1


# ---- the real DermaMNIST images in the ISIC 2019 layout ---------------------------------------------

HAM_TO_ISIC_CLASS = {"akiec": "AK", "bcc": "BCC", "bkl": "BKL", "df": "DF", "mel": "MEL", "nv": "NV", "vasc": "VASC"}
HAM_TO_ISIC_SITE = {  # how ISIC 2019's metadata states HAM10000's sites: coarser
    "back": "posterior torso",
    "chest": "anterior torso",
    "abdomen": "anterior torso",
    "trunk": "anterior torso",
    "upper extremity": "upper extremity",
    "hand": "upper extremity",
    "lower extremity": "lower extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "genital": "oral/genital",
    "face": "head/neck",
    "scalp": "head/neck",
    "ear": "head/neck",
    "neck": "head/neck",
    "unknown": "",
}


@pytest.fixture(scope="module")
def dermamnist_as_isic2019(tmp_path_factory):
    """The 8,010 DermaMNIST images (HAM10000 reader) and the same written out in the ISIC 2019 layout (images linked)."""
    ham = load_dataset(shared("dermamnist28"))
    root = tmp_path_factory.mktemp("dermamnist_isic2019")
    m = ham.meta
    gt = pd.DataFrame({"image": m["image_id"]})
    for c in (*(d.upper() for d in ISIC2019.codes), "UNK"):
        gt[c] = (m["dx"].map(HAM_TO_ISIC_CLASS) == c).astype(float)
    gt.to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(
        {
            "image": m["image_id"],
            "age_approx": m["age"],
            "anatom_site_general": m["localization"].map(HAM_TO_ISIC_SITE),
            "lesion_id": m["lesion_id"],
            "sex": m["sex"].replace("unknown", ""),
        }
    ).to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    (root / "ISIC_2019_Training_Input").mkdir()
    for image_id, path in zip(m["image_id"], m["path"]):
        os.symlink(path, root / "ISIC_2019_Training_Input" / f"{image_id}.jpg")
    return ham, load_dataset(root)


def test_dermamnist_in_the_isic2019_layout_reads_the_same_labels_and_lesions(dermamnist_as_isic2019):
    ham, isic = dermamnist_as_isic2019
    assert len(ham) == len(isic) == 8010 and isic.layout == "isic2019" and isic.warnings == []
    a, b = _by_id(ham), _by_id(isic).loc[ham.meta["image_id"]]
    assert (b["dx"] == a["dx"].map(lambda c: "ak" if c == "akiec" else c)).all()
    assert (b["label"] == [ISIC2019.codes.index(c) for c in b["dx"]]).all()
    assert (b["lesion_id"] == a["lesion_id"]).all() and b["lesion_id"].nunique() == a["lesion_id"].nunique()
    assert (b["source"] == "HAM").all()
    assert np.array_equal(b["age"].to_numpy(), a["age"].to_numpy(), equal_nan=True) and (b["sex"] == a["sex"]).all()
    back = {"posterior torso": "back", "anterior torso": "trunk", "upper extremity": "upper extremity"}
    back |= {"lower extremity": "lower extremity", "palms/soles": "acral", "oral/genital": "genital", "head/neck": "unknown", "": "unknown"}
    assert (b["localization"] == a["localization"].map(HAM_TO_ISIC_SITE).map(back)).all()
    assert all(Path(p).resolve() == Path(q).resolve() for p, q in zip(a["path"], b["path"]))


def test_dermamnist_in_the_isic2019_layout_gets_the_same_predictions(dermamnist_as_isic2019, default_model):
    """The shipped model on 128 images read through each reader, in one batch (TTA off: this compares the readers)."""
    from skinlesion.predict import Predictor

    ham, isic = dermamnist_as_isic2019
    rows = np.random.default_rng(21).choice(len(ham), size=128, replace=False)
    ids = ham.meta["image_id"].iloc[rows].tolist()
    where = {i: k for k, i in enumerate(isic.meta["image_id"])}
    readers = [(ham, rows), (isic, np.array([where[i] for i in ids]))]
    images = [ds.image(int(i)) for ds, idx in readers for i in idx]
    meta = [{k: ds.meta[k].iat[int(i)] for k in ("age", "sex", "localization")} for ds, idx in readers for i in idx]
    preds = Predictor("default", tta=False).predict_images(images, ids + ids, meta=meta)
    a, b = preds[:128], preds[128:]
    # the image pathway is the same for every image: its out-of-distribution score comes from the pixels alone
    assert all(p.ood_score == q.ood_score for p, q in zip(a, b))
    # where both readers give the same age, sex and site, the whole prediction is the same
    same = [k for k in range(128) if meta[k]["localization"] == meta[128 + k]["localization"]]
    assert len(same) > 64
    for k in same:
        assert np.allclose(list(a[k].probabilities.values()), list(b[k].probabilities.values()), rtol=0, atol=1e-6), ids[k]
        assert a[k].top == b[k].top and a[k].tier == b[k].tier
