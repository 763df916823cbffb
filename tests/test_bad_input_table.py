"""A table of bad inputs across every verb (issue: reliability): each is refused with exit code 2 (1 where
``predict`` could analyse nothing), in one sentence that names the thing and what to do, never a
traceback and never "unexpected"."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def ctx(tiny_run, tmp_path_factory):
    """Everything the cases point at: the tiny run, its data and split, and a folder of bad files."""
    data, split, run = tiny_run
    d = tmp_path_factory.mktemp("bad")
    img = sorted((data / "images").glob("*.jpg"))[0]
    (d / "text.jpg").write_text("not an image")
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(img.read_bytes()[:300])
    (d / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (d / "noimages").mkdir()
    (d / "noimages" / "readme.txt").write_text("nothing here")
    os.symlink(d / "loop_b", d / "loop_a")
    os.symlink(d / "loop_a", d / "loop_b")
    os.symlink(d / "gone", d / "dangling")
    (d / "a_file").write_text("I am a file")
    (d / "folder.csv").mkdir()
    (d / "model.pt").write_bytes(b"\x80\x04K\x01.")
    (d / "junk.safetensors").write_text("not safetensors")
    shutil.copy(run / "best.safetensors", d / "badjson.safetensors")
    (d / "badjson.json").write_text("{ this is not json")
    cfg = json.loads((run / "best.json").read_text())
    shutil.copy(run / "best.safetensors", d / "t0.safetensors")
    (d / "t0.json").write_text(json.dumps({**cfg, "temperature": 0}))
    (d / "meta_noimage.csv").write_text("name,age\nx,40\n")
    (d / "meta_badage.csv").write_text(f"image,age,sex,localization\n{img.stem},abc,male,back\n")
    (d / "meta_badsex.csv").write_text(f"image,age,sex,localization\n{img.stem},40,robot,back\n")
    (d / "split_nocols.csv").write_text("foo,bar\n1,2\n")
    manifest = split.read_text().splitlines()
    unknown = [",".join([f"ISIC_999999{i}"] + r.split(",")[1:]) for i, r in enumerate(manifest[1:4])]
    (d / "split_unknown.csv").write_text("\n".join([manifest[0]] + unknown) + "\n")
    (d / "empty_dir").mkdir()
    np.savez(d / "wrong.npz", foo=np.zeros(3))
    (d / "ids_unknown.csv").write_text("image_id\nISIC_9999999\n")
    np.savez(d / "objects.npz", train_images=np.array([{"a": 1}], dtype=object), train_labels=np.array([0]))
    meta_lines = (data / "HAM10000_metadata.csv").read_text().splitlines()  # issue 28: the four refusals that name the fix
    (d / "semicolon").mkdir()
    (d / "semicolon" / "HAM10000_metadata.csv").write_text("\n".join(ln.replace(",", ";") for ln in meta_lines) + "\n")
    (d / "latin1").mkdir()
    latin = list(meta_lines)
    latin[1] = latin[1].rsplit(",", 1)[0] + ",\u00e9paule"  # a Latin-1 byte (0xe9) in the last field
    (d / "latin1" / "HAM10000_metadata.csv").write_bytes(("\n".join(latin) + "\n").encode("latin-1"))
    (d / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "empty_manifest.csv").write_bytes(b"")
    evil = d / "evilrun"  # a run folder whose resume checkpoint is a pickle that would run code
    (evil / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.json", evil / "config.json")
    _evil_checkpoint(evil / "checkpoints" / "last.ckpt")
    other = split.read_text().splitlines()
    (d / "manifest_in_use.csv").write_text("\n".join([other[0], *other[2:], other[1]]) + "\n")  # another order: not identical
    return {"data": data, "split": split, "run": run, "img": img, "d": d}


class _Evil:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def _evil_checkpoint(path):
    import torch

    torch.save({"epoch": 0, "state_dict": {}, "callbacks": _Evil()}, path)


def P(name):
    return lambda c: c["d"] / name


# (case id, argument list built from ctx, expected exit code, phrases the message must hold)
CASES = [
    # issue 18's smaller refusals ("!phrase": the message must not hold it)
    ("info-npz-object-arrays", lambda c: ["info", c["d"] / "objects.npz"], 2, ["objects.npz", "Python objects", "!allow_pickle"]),
    (
        "train-resume-pickled-checkpoint",
        lambda c: ["train", "--resume", "--out", c["d"] / "evilrun"],
        2,
        ["cannot be loaded safely", "Unsupported global", "print", "another --out.", "!weights_only", "!trust", "!ran code"],
    ),
    (
        "train-resume-with-another-option",
        lambda c: ["train", "--resume", "--out", c["d"] / "evilrun", "--epochs", "99"],
        2,
        ["--resume continues the run", "--epochs", "another --out"],
    ),
    (
        "train-resume-of-an-empty-folder",
        lambda c: ["train", "--resume", "--out", c["d"] / "norun"],
        2,
        ["Nothing to resume in", "no config.json"],
    ),
    (
        "split-would-overwrite-a-manifest",
        lambda c: ["split", c["data"], "--out", c["d"] / "manifest_in_use.csv"],
        2,
        ["manifest_in_use.csv already holds another split manifest", "--force"],
    ),
    ("predict-rule-unknown", lambda c: ["predict", c["run"], c["img"], "--rule", "fastest"], 2, ["'fastest' decision rule"]),
    (
        "evaluate-rule-unknown",
        lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "ev_rule", "--rule", "fastest"],
        2,
        ["'fastest' decision rule"],
    ),
    (
        "train-decision-rule-bogus",
        lambda c: ["train", c["data"], "--split", c["split"], "--out", c["d"] / "t_rule", "--decision-rule", "fastest"],
        2,
        ["--decision-rule", "most-probable or balanced"],
    ),
    # image files
    ("predict-missing-file", lambda c: ["predict", c["run"], c["d"] / "nope.jpg"], 1, ["nope.jpg"]),
    ("predict-text-as-jpg", lambda c: ["predict", c["run"], c["d"] / "text.jpg"], 1, ["text.jpg"]),
    ("predict-empty-file", lambda c: ["predict", c["run"], c["d"] / "empty.jpg"], 1, ["empty.jpg"]),
    ("predict-truncated-jpeg", lambda c: ["predict", c["run"], c["d"] / "truncated.jpg"], 1, ["truncated.jpg"]),
    ("predict-heic", lambda c: ["predict", c["run"], c["d"] / "photo.heic"], 1, ["photo.heic"]),
    ("predict-folder-without-images", lambda c: ["predict", c["run"], c["d"] / "noimages"], 1, ["readme.txt", "none of the 1 file"]),
    ("predict-symlink-loop", lambda c: ["predict", c["run"], c["d"] / "loop_a"], 1, ["loop_a", "loop"]),
    # patient-data CSVs and formats
    ("predict-meta-missing", lambda c: ["predict", c["run"], c["img"], "--meta", c["d"] / "nope.csv"], 2, ["nope.csv"]),
    ("predict-meta-no-image-column", lambda c: ["predict", c["run"], c["img"], "--meta", c["d"] / "meta_noimage.csv"], 2, ["image"]),
    ("predict-meta-bad-age", lambda c: ["predict", c["run"], c["img"], "--meta", c["d"] / "meta_badage.csv"], 2, ["age"]),
    ("predict-meta-bad-sex", lambda c: ["predict", c["run"], c["img"], "--meta", c["d"] / "meta_badsex.csv"], 2, ["sex"]),
    ("predict-format-bogus", lambda c: ["predict", c["run"], c["img"], "--format", "bogus"], 2, ["bogus"]),
    ("predict-backend-bogus", lambda c: ["predict", c["run"], c["img"], "--backend", "tpu"], 2, ["tpu"]),
    # manifests and id lists
    (
        "evaluate-split-missing",
        lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "ev1", "--split", c["d"] / "nope.csv"],
        2,
        ["nope.csv"],
    ),
    (
        "evaluate-split-no-columns",
        lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "ev2", "--split", c["d"] / "split_nocols.csv"],
        2,
        ["split_nocols.csv"],
    ),
    (
        "evaluate-split-unknown-ids",
        lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "ev3", "--split", c["d"] / "split_unknown.csv"],
        2,
        ["ISIC_999999"],
    ),
    (
        "evaluate-subset-bogus",
        lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "ev4", "--split", c["split"], "--subset", "holdout"],
        2,
        ["holdout"],
    ),
    (
        "evaluate-ids-unknown",
        lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "ev5", "--ids", c["d"] / "ids_unknown.csv"],
        2,
        ["ISIC_9999999"],
    ),
    ("train-split-missing", lambda c: ["train", c["data"], "-o", c["d"] / "tr1", "--split", c["d"] / "nope.csv"], 2, ["nope.csv"]),
    # model files
    ("predict-model-missing", lambda c: ["predict", c["d"] / "nope.safetensors", c["img"]], 2, ["nope.safetensors"]),
    ("predict-model-pickle", lambda c: ["predict", c["d"] / "model.pt", c["img"]], 2, ["model.pt", "safetensors"]),
    ("predict-model-junk", lambda c: ["predict", c["d"] / "junk.safetensors", c["img"]], 2, ["junk"]),
    ("predict-model-bad-json", lambda c: ["predict", c["d"] / "badjson.safetensors", c["img"]], 2, ["badjson.json"]),
    ("predict-model-temperature-0", lambda c: ["predict", c["d"] / "t0.safetensors", c["img"]], 2, ["temperature"]),
    ("evaluate-model-junk", lambda c: ["evaluate", "-m", c["d"] / "junk.safetensors", "-d", c["data"], "-o", c["d"] / "ev6"], 2, ["junk"]),
    ("export-model-missing", lambda c: ["export", c["d"] / "nope.safetensors"], 2, ["nope.safetensors"]),
    ("card-model-pickle", lambda c: ["card", c["d"] / "model.pt"], 2, ["model.pt"]),
    # numeric options
    (
        "train-epochs-negative",
        lambda c: ["train", c["data"], "-o", c["d"] / "tr2", "--split", c["split"], "--epochs", "-1"],
        2,
        ["--epochs"],
    ),
    (
        "train-batch-size-0",
        lambda c: ["train", c["data"], "-o", c["d"] / "tr3", "--split", c["split"], "--batch-size", "0"],
        2,
        ["--batch-size"],
    ),
    ("train-lr-negative", lambda c: ["train", c["data"], "-o", c["d"] / "tr4", "--split", c["split"], "--lr", "-1"], 2, ["--lr"]),
    (
        "train-input-size-0",
        lambda c: ["train", c["data"], "-o", c["d"] / "tr5", "--split", c["split"], "--input-size", "0"],
        2,
        ["--input-size"],
    ),
    ("train-folds-1", lambda c: ["train", c["data"], "-o", c["d"] / "tr6", "--folds", "1"], 2, ["--folds"]),
    ("train-devices-99", lambda c: ["train", c["data"], "-o", c["d"] / "tr7", "--split", c["split"], "--devices", "99"], 2, ["--devices"]),
    (
        "train-augment-unknown",
        lambda c: ["train", c["data"], "-o", c["d"] / "tra1", "--split", c["split"], "--augment", "hue=0.1"],
        2,
        ["hue"],
    ),
    (
        "train-augment-out-of-range",
        lambda c: ["train", c["data"], "-o", c["d"] / "tra2", "--split", c["split"], "--augment", "contrast=2"],
        2,
        ["contrast=2", "0.9"],
    ),
    (
        "train-augment-not-a-pair",
        lambda c: ["train", c["data"], "-o", c["d"] / "tra3", "--split", c["split"], "--augment", "contrast"],
        2,
        ["NAME=NUMBER"],
    ),
    (
        "train-epochs-not-a-number",
        lambda c: ["train", c["data"], "-o", c["d"] / "tr8", "--split", c["split"], "--epochs", "ten"],
        2,
        ["--epochs"],
    ),
    ("split-fraction-too-big", lambda c: ["split", c["data"], "-o", c["d"] / "s1.csv", "--train", "1.5"], 2, ["1.5"]),
    ("prepare-size-too-small", lambda c: ["prepare", c["data"], "-o", c["d"] / "c1", "--size", "4"], 2, ["--size"]),
    ("prepare-size-not-a-number", lambda c: ["prepare", c["data"], "-o", c["d"] / "c2", "--size", "abc"], 2, ["--size"]),
    ("app-port-out-of-range", lambda c: ["app", "--port", "0"], 2, ["--port"]),
    ("app-sample-not-an-image", lambda c: ["app", "--sample", c["d"] / "text.jpg"], 2, ["text.jpg"]),
    # output paths
    ("predict-out-is-a-folder", lambda c: ["predict", c["run"], c["img"], "--out", c["d"] / "folder.csv"], 2, ["folder.csv", "folder"]),
    ("predict-out-under-a-file", lambda c: ["predict", c["run"], c["img"], "--out", c["d"] / "a_file" / "p.csv"], 2, ["p.csv"]),
    ("evaluate-out-is-a-file", lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "a_file"], 2, ["a_file"]),
    ("evaluate-out-under-a-file", lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "a_file" / "ev"], 2, ["a_file"]),
    ("split-out-under-a-file", lambda c: ["split", c["data"], "-o", c["d"] / "a_file" / "s.csv"], 2, ["s.csv"]),
    ("split-out-is-a-folder", lambda c: ["split", c["data"], "-o", c["d"] / "folder.csv"], 2, ["folder.csv"]),
    ("export-out-not-onnx", lambda c: ["export", c["run"], "--out", c["d"] / "m.txt"], 2, ["m.txt", ".onnx"]),
    ("export-out-under-a-file", lambda c: ["export", c["run"], "--out", c["d"] / "a_file" / "m.onnx"], 2, ["a_file", "is a file"]),
    ("card-out-is-a-folder", lambda c: ["card", c["run"], "--out", c["d"] / "folder.csv"], 2, ["folder.csv"]),
    ("prepare-out-is-a-file", lambda c: ["prepare", c["data"], "-o", c["d"] / "a_file"], 2, ["a_file"]),
    ("train-out-is-a-file", lambda c: ["train", c["data"], "-o", c["d"] / "a_file", "--split", c["split"]], 2, ["a_file"]),
    # datasets
    ("info-missing", lambda c: ["info", c["d"] / "nope"], 2, ["nope"]),
    ("info-empty-folder", lambda c: ["info", c["d"] / "empty_dir"], 2, ["empty_dir"]),
    # issue 28: a refusal names the fix (the separator, the encoding, what a .npz is, what the empty file should be)
    ("info-semicolon-metadata", lambda c: ["info", c["d"] / "semicolon"], 2, ["separated by ';'", "save it with commas"]),
    ("info-latin1-metadata", lambda c: ["info", c["d"] / "latin1"], 2, ["not UTF-8", "save it as UTF-8", "!re-download"]),
    ("info-random-bytes-npz", lambda c: ["info", c["d"] / "random.npz"], 2, ["random.npz is not a .npz file", "!allow_pickle", "!pickle"]),
    (
        "audit-empty-manifest",
        lambda c: ["audit", c["data"], "--split", c["d"] / "empty_manifest.csv"],
        2,
        ["empty_manifest.csv is empty", "skinlesion split", "!No columns to parse"],
    ),
    ("info-wrong-npz", lambda c: ["info", c["d"] / "wrong.npz"], 2, ["wrong.npz"]),
    ("info-symlink-loop", lambda c: ["info", c["d"] / "loop_a"], 2, ["loop_a", "symbolic link in a loop"]),
    ("info-dangling-link", lambda c: ["info", c["d"] / "dangling"], 2, ["dangling", "which does not exist"]),
    ("train-empty-folder", lambda c: ["train", c["d"] / "empty_dir", "-o", c["d"] / "tr9", "--folds", "3"], 2, ["empty_dir"]),
    ("audit-split-missing", lambda c: ["audit", c["data"], "--split", c["d"] / "nope.csv"], 2, ["nope.csv"]),
    ("audit-no-official-split", lambda c: ["audit", c["data"]], 2, ["--split"]),
    ("audit-split-unknown-ids", lambda c: ["audit", c["data"], "--split", c["d"] / "split_unknown.csv"], 2, ["ISIC_999999"]),
    ("audit-distance-out-of-range", lambda c: ["audit", c["data"], "--split", c["split"], "--max-distance", "-1"], 2, ["--max-distance"]),
    ("split-dedup-on-a-csv", lambda c: ["split", c["data"] / "HAM10000_metadata.csv", "--dedup", "-o", c["d"] / "s2.csv"], 2, ["--dedup"]),
    (
        "evaluate-labels-missing",
        lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "ev8", "--labels", c["d"] / "nope.csv"],
        2,
        ["nope.csv"],
    ),
    (
        "evaluate-labels-not-isic",
        lambda c: ["evaluate", "-m", c["run"], "-d", c["data"], "-o", c["d"] / "ev9", "--labels", c["d"] / "split_nocols.csv"],
        2,
        ["MEL"],
    ),
    # usage
    ("unknown-verb", lambda c: ["frobnicate"], 2, ["frobnicate"]),
    ("unknown-option", lambda c: ["predict", c["run"], c["img"], "--colour"], 2, ["--colour"]),
    ("split-kind-bogus", lambda c: ["split", c["data"], "--kind", "bogus"], 2, ["bogus"]),
    ("evaluate-missing-data", lambda c: ["evaluate", "-m", c["run"], "-o", c["d"] / "ev7"], 2, ["--data"]),
]


@pytest.mark.parametrize("args, code, phrases", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_sentence(ctx, run_cli, args, code, phrases):
    got, out, err = run_cli(*args(ctx))
    text = out + err
    print(f"exit {got}\n{text}")
    assert got == code, text
    assert "Traceback" not in text and "unexpected" not in text.lower(), text
    for phrase in phrases:
        if phrase.startswith("!"):
            assert phrase[1:] not in text, (phrase, text)
        else:
            assert phrase in text, (phrase, text)


def test_the_table_covers_forty_inputs_and_every_verb():
    assert len(CASES) >= 40
    verbs = {c[1]({k: Path("x") for k in ("data", "split", "run", "img", "d")})[0] for c in CASES}
    assert {"predict", "evaluate", "train", "split", "export", "card", "prepare", "info", "app", "audit"} <= verbs


def test_a_folder_scan_visits_each_linked_folder_once(tmp_path):
    """A link back to a parent folder is a loop: scans list each file once instead of following it 40 levels deep."""
    from skinlesion.data.ham10000 import index_images
    from skinlesion.errors import walk_files

    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for name in ("imgs/a.jpg", "imgs/sub/b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path / "imgs", tmp_path / "imgs" / "sub" / "back")  # sub/back -> imgs: a loop
    os.symlink(tmp_path / "imgs" / "sub", tmp_path / "imgs" / "again")  # a second way to sub
    files = [p.relative_to(tmp_path).as_posix() for p in walk_files(tmp_path / "imgs")]
    assert sorted(Path(f).name for f in files) == ["a.jpg", "b.jpg"]
    assert sorted(index_images(tmp_path / "imgs")) == ["a", "b"]


def test_evaluate_warns_when_the_manifest_test_shares_lesions_with_train(ctx, run_cli, tmp_path):
    import pandas as pd

    data, split, run = ctx["data"], ctx["split"], ctx["run"]
    code, out, err = run_cli("evaluate", "-m", run, "-d", data, "-o", tmp_path / "clean", "--split", split)
    assert code == 0, err
    assert "share a lesion" not in err
    assert json.loads((tmp_path / "clean" / "metrics.json").read_text())["warnings"] == []
    m = pd.read_csv(split)
    leaky = m.copy()
    test_lesions = m.loc[m["split"] == "test", "lesion_id"].unique()[:3]
    train_rows = m.index[m["split"] == "train"][:3]
    leaky.loc[train_rows, "lesion_id"] = test_lesions  # 3 train images now belong to test lesions: a leaky split
    leaky.to_csv(tmp_path / "leaky.csv", index=False)
    expected = int(m.loc[m["split"] == "test", "lesion_id"].isin(test_lesions).sum())
    code, out, err = run_cli("evaluate", "-m", run, "-d", data, "-o", tmp_path / "leaky", "--split", tmp_path / "leaky.csv")
    assert code == 0, err
    assert expected >= 3 and f"warning: {expected} of the" in err and "share a lesion" in err
    assert "share a lesion" in (tmp_path / "leaky" / "report.md").read_text()
