"""Models beyond HAM10000's seven classes, end to end through the command line (issue 21): an 8-class ISIC 2019
model (split, train, evaluate, predict CSV and ISIC 2019 submission, card, app), a melanoma-vs-other model on
ISIC 2020 grouped by patient, HAM10000 and ISIC 2019 combined with each image once, and a HAM10000 model
validated externally on ISIC 2019 through a stated mapping."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from skinlesion.classes import HAM10000, ISIC2019, MELANOMA
from skinlesion.data import load_dataset

SIZE = (96, 72)
TRAIN = ["--backbone", "resnet18", "--input-size", "32", "--epochs", "2", "--batch-size", "16", "--lr", "3e-3"]
TRAIN += ["--no-progress", "--num-workers", "0"]
APP = Path(__file__).resolve().parents[1] / "src" / "skinlesion" / "app.py"


pytestmark = pytest.mark.slow  # every test here trains or evaluates a model


def _train(run_cli, data, tmp_path, name):
    split = tmp_path / f"{name}_split.csv"
    code, out, err = run_cli("split", data, "--out", split, "--train", "0.6", "--val", "0.2", "--test", "0.2", "--seed", "1")
    assert code == 0, err
    run = tmp_path / name
    code, out, err = run_cli("train", data, "--split", split, "--out", run, *TRAIN)
    assert code == 0, err
    return split, run


def _cli(*args):
    """The CLI in-process, outside a test (a module fixture): (exit code, "", "")."""
    from skinlesion.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0, "", ""
    return 0, "", ""


@pytest.fixture(scope="module")
def isic2019_run(tmp_path_factory):
    from skinlesion.data.synthetic import write_isic2019

    tmp = tmp_path_factory.mktemp("isic2019_model")
    data = write_isic2019(tmp / "isic2019", n_lesions=90, size=SIZE, seed=5, min_per_class=8, unknown=2)
    split, run = _train(_cli, data, tmp, "run")
    return data, split, run


def test_an_8_class_model_trains_evaluates_and_speaks_its_own_classes(isic2019_run, run_cli, tmp_path):
    data, split, run = isic2019_run
    bundle = json.loads((run / "best.json").read_text())
    assert bundle["label_set"] == "isic2019" and bundle["classes"] == list(ISIC2019.codes) and "malignant_threshold" in bundle["tier"]

    code, out, err = run_cli("evaluate", "-m", run, "-d", data, "--split", split, "--subset", "test", "-o", tmp_path / "ev")
    assert code == 0, err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "external" not in m  # the data's own label set: nothing mapped
    assert list(m["per_class"]) == list(ISIC2019.codes) and len(m["confusion_matrix"]) == 8
    assert m["n_images"] == len(pd.read_csv(split).query("split == 'test'"))

    images = sorted((data / "ISIC_2019_Training_Input").glob("*.jpg"))[:3]
    code, out, err = run_cli("predict", run, *images, "--out", tmp_path / "p.csv")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "p.csv")
    assert [c for c in table.columns if c in ISIC2019.codes] == list(ISIC2019.codes)  # eight probability columns
    assert set(table["top_class"]) <= set(ISIC2019.codes) and (table[list(ISIC2019.codes)].sum(axis=1) - 1).abs().max() < 1e-4
    malignant = table[["ak", "bcc", "mel", "scc"]].sum(axis=1)  # the tier's malignant or pre-malignant classes: SCC among them
    assert (table["malignant_probability"] - malignant).abs().max() < 1e-4
    code, out, err = run_cli("predict", run, *images, "--format", "isic2019", "--out", tmp_path / "sub.csv")
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"] and (sub["UNK"] == 0).all()
    assert abs(sub.loc[0, "SCC"] - table.loc[0, "scc"]) < 1e-6
    code, out, err = run_cli("predict", run, *images, "--format", "isic2018", "--out", tmp_path / "s18.csv")
    assert code == 2 and "isic2019" in err and not (tmp_path / "s18.csv").exists(), err

    code, out, err = run_cli("card", run, "--out", tmp_path / "card.md")
    assert code == 0, err
    card = (tmp_path / "card.md").read_text()
    for d in ISIC2019.diagnoses:
        assert f"| {d.code} |" in card or f"`{d.code}`" in card or f"{d.code} (" in card, d.code
    assert "squamous cell carcinoma" in card.lower() and "isic2019" in card


def test_the_app_shows_the_8_class_models_classes(isic2019_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    data, _, run = isic2019_run
    image = sorted((data / "ISIC_2019_Training_Input").glob("*.jpg"))[0]
    monkeypatch.setenv("SKINLESION_MODEL", str(run))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    at.file_uploader[0].set_value((image.name, image.read_bytes(), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    chart = next(str(m.value) for m in at.main.markdown if 'class="sl-prob"' in str(m.value))
    assert chart.count('class="sl-prob"') == 8 and all(f"({c})" in chart for c in ISIC2019.codes)
    assert "Squamous cell carcinoma" in " ".join(str(m.value) for m in at.sidebar.markdown)


def test_a_melanoma_model_on_isic2020_is_split_by_patient(tmp_path, run_cli):
    from skinlesion.data.synthetic import write_isic2020

    data = write_isic2020(tmp_path / "isic2020", n_patients=40, size=SIZE, seed=6, duplicates=2, min_melanoma=12)
    split, run = _train(run_cli, data, tmp_path, "mel")
    manifest = pd.read_csv(split)
    patients = pd.read_csv(data / "train.csv").set_index("image_name")["patient_id"]
    per_patient = manifest.assign(patient=manifest["image_id"].map(patients)).groupby("patient")["split"].nunique()
    assert (per_patient == 1).all() and len(per_patient) > 3  # no patient on both sides of a split
    bundle = json.loads((run / "best.json").read_text())
    assert bundle["label_set"] == "melanoma" and bundle["classes"] == ["mel", "other"] == list(MELANOMA.codes)
    image = sorted((data / "train").glob("*.jpg"))[0]
    code, out, err = run_cli("predict", run, image, "--out", tmp_path / "p.csv")
    assert code == 0, err
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert abs(row["mel"] + row["other"] - 1) < 1e-6 and abs(row["malignant_probability"] - row["mel"]) < 1e-6
    assert "nv" not in row.index and row["top_class"] in ("mel", "other")


def test_ham10000_and_isic2019_sharing_ids_count_each_image_once(tmp_path, run_cli):
    """ISIC 2019 holds HAM10000's images under the same ids: written here from a synthetic HAM10000 folder plus
    images of its own; combined, every image is there once, in HAM10000's label set (ak and scc as akiec)."""
    from skinlesion.data.synthetic import write_isic2019, write_synthetic

    ham = write_synthetic(tmp_path / "ham", n_lesions=25, layout="flat", size=SIZE, seed=7)
    own = write_isic2019(tmp_path / "own", n_lesions=20, size=SIZE, seed=8, min_per_class=1)
    isic = tmp_path / "isic2019"
    (isic / "ISIC_2019_Training_Input").mkdir(parents=True)
    hm = pd.read_csv(ham / "HAM10000_metadata.csv")
    shared = hm.iloc[:15]
    gt_own = pd.read_csv(own / "ISIC_2019_Training_GroundTruth.csv")
    md_own = pd.read_csv(own / "ISIC_2019_Training_Metadata.csv", dtype={"lesion_id": str})
    renamed = {old: f"ISIC_9{k:06d}" for k, old in enumerate(gt_own["image"])}  # ids HAM10000 does not have
    for old, new in renamed.items():
        shutil.copy(own / "ISIC_2019_Training_Input" / f"{old}.jpg", isic / "ISIC_2019_Training_Input" / f"{new}.jpg")
    for iid in shared["image_id"]:
        shutil.copy(ham / "images" / f"{iid}.jpg", isic / "ISIC_2019_Training_Input" / f"{iid}.jpg")
    one_hot = {"akiec": "AK", **{c: c.upper() for c in HAM10000.codes if c != "akiec"}}
    gt = pd.DataFrame({"image": shared["image_id"]})
    for c in ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"):
        gt[c] = (shared["dx"].map(one_hot) == c).astype(float).to_numpy()
    gt = pd.concat([gt, gt_own.assign(image=gt_own["image"].map(renamed))])
    md = pd.DataFrame({"image": shared["image_id"], "age_approx": shared["age"], "anatom_site_general": "", "sex": shared["sex"]})
    md["lesion_id"] = shared["lesion_id"].to_numpy()
    md = pd.concat([md, md_own.assign(image=md_own["image"].map(renamed))])
    gt.to_csv(isic / "ISIC_2019_Training_GroundTruth.csv", index=False)
    md[["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]].to_csv(isic / "ISIC_2019_Training_Metadata.csv", index=False)

    a, b = load_dataset(ham), load_dataset(isic)
    both = load_dataset([ham, isic])
    assert b.label_set == ISIC2019 and both.label_set == HAM10000
    said = next(w for w in both.warnings if w.startswith("combined "))
    assert f"dropped {len(shared)} already in an earlier dataset by id" in said, said
    # synthetic drawings are simple: a few of ISIC's own may hash as near-duplicates of HAM images; said, and counted
    near = re.search(r"(\d+) near-duplicates", said)
    n_near = int(near.group(1)) if near else 0
    assert len(both) == len(a) + len(b) - len(shared) - n_near and both.meta["image_id"].is_unique
    assert set(a.meta["image_id"]) <= set(both.meta["image_id"])  # the first dataset's images all kept, once
    dx = both.meta.set_index("image_id")["dx"]
    own_dx = b.meta.set_index("image_id")["dx"]
    kept = [iid for iid in own_dx.index if iid in dx.index and iid not in set(shared["image_id"])]
    assert len(kept) == len(b) - len(shared) - n_near
    for iid in kept:
        code = own_dx[iid]
        assert dx[iid] == ("akiec" if code in ("ak", "scc") else code), iid
    code, out, err = run_cli("info", ham, isic)
    assert code == 0, err
    assert f"images: {len(both)}" in out and "label set: ham10000" in out


def test_a_ham10000_model_is_validated_on_isic2019_through_a_stated_mapping(tiny_run, tmp_path, run_cli):
    from skinlesion.data.synthetic import write_isic2019

    _, _, run = tiny_run
    data = write_isic2019(tmp_path / "isic2019", n_lesions=40, size=SIZE, seed=9, min_per_class=3, unknown=1)
    ds = load_dataset(data)
    code, out, err = run_cli("evaluate", "-m", run, "-d", data, "-o", tmp_path / "ev")
    assert code == 0, err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    ext = m["external"]
    assert ext["data_label_set"] == "isic2019" and ext["model_label_set"] == "ham10000"
    assert ext["mapping"]["ak"] == "akiec" and ext["mapping"]["scc"] == "akiec" and ext["n_unmapped"] == 0
    assert m["n_images"] == len(ds) and list(m["per_class"]) == list(HAM10000.codes)
    sources = ds.meta["source"].dropna().value_counts()
    got = {r["source"]: r["n"] for r in m["per_source"]}
    assert all(got[s] == n for s, n in sources.items()), (got, sources)
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "External validation" in report and "Per source" in report
    # a stated mapping that leaves SCC out: its images are counted, named and left out
    (tmp_path / "map.csv").write_text("from,to\nscc,\n")
    code, out, err = run_cli("evaluate", "-m", run, "-d", data, "-o", tmp_path / "ev2", "--map", tmp_path / "map.csv")
    assert code == 0, err
    n_scc = int((ds.meta["dx"] == "scc").sum())
    m2 = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert m2["external"]["unmapped"] == {"scc": n_scc} and m2["n_images"] == len(ds) - n_scc
    assert f"{n_scc} image(s) have a class with no counterpart" in err
