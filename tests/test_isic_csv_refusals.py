"""ISIC CSV files as the issue-28 battery met them: split on the 2019 ground truth CSV, a class column the label
set does not know named, a ';'-separated metadata CSV told its separator."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def isic2019(tmp_path_factory):
    from skinlesion.data.synthetic import write_isic2019

    return write_isic2019(tmp_path_factory.mktemp("isic2019"), n_lesions=20, size=(48, 36), seed=5, unknown=0)


GT, MD = "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"


def test_split_accepts_the_isic2019_ground_truth_csv(isic2019, run_cli, tmp_path):
    code, out, err = run_cli("split", isic2019 / GT, "--out", tmp_path / "s.csv")
    assert code == 0, err
    m = pd.read_csv(tmp_path / "s.csv")
    assert len(m) == len(pd.read_csv(isic2019 / GT)) and set(m["split"]) == {"train", "val", "test"}


def test_a_class_column_the_label_set_does_not_know_is_named(isic2019, tmp_path):
    import shutil

    from skinlesion.data import load_dataset

    d = tmp_path / "xyz"
    shutil.copytree(isic2019, d)
    gt = pd.read_csv(d / GT)
    gt["XYZ"] = 0
    classes = [c for c in gt.columns if c not in ("image", "XYZ")]
    gt.loc[[0, 1], classes] = 0
    gt.loc[[0, 1], "XYZ"] = 1
    gt.to_csv(d / GT, index=False)
    ds = load_dataset(d)
    said = " ".join(ds.warnings)
    assert "2 with no class (2 marked XYZ: a class column the isic2019 label set does not know" in said, said


def test_a_semicolon_separated_isic_metadata_csv_is_told_its_separator(isic2019, tmp_path, run_cli):
    import shutil

    d = tmp_path / "semi"
    shutil.copytree(isic2019, d)
    md = pd.read_csv(d / MD)
    md.to_csv(d / MD, index=False, sep=";")
    code, _, err = run_cli("info", d)
    assert code == 2 and "separated by ';'" in err and "save it with commas" in err and "no ground truth" not in err.lower(), err
