"""Predictor, predict CLI, ONNX export, OOD warning, Grad-CAM (issue: prediction and app)."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.classes import CODES
from skinlesion.errors import SkinLesionError

from .conftest import shared


def test_predict_folder_with_good_and_bad_files_writes_a_row_each(tiny_run, run_cli, tmp_path):
    data, _, run = tiny_run
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted((data / "images").glob("*.jpg"))[:3]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / "cut.jpg").write_bytes(good[0].read_bytes()[:300])
    code, out, err = run_cli("predict", run, folder, str(data / "images" / "*.jpg"), "--out", tmp_path / "p.csv")
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "p.csv")
    n_glob = len(list((data / "images").glob("*.jpg")))
    assert len(rows) == 6 + n_glob
    errors = rows.set_index(rows["image"].map(lambda s: s.split("/")[-1]))["error"].fillna("")
    assert "empty file" in errors["empty.jpg"] and "not an image" in errors["notes.txt"]
    assert "corrupt or truncated" in errors["cut.jpg"]
    ok = rows[rows["error"].isna()]
    assert len(ok) == 3 + n_glob
    assert np.allclose(ok[list(CODES)].sum(axis=1), 1.0, atol=1e-4)
    assert set(ok["top_class"]) <= set(CODES)
    assert np.allclose(ok["malignant_probability"], ok[["akiec", "bcc", "mel"]].sum(axis=1), atol=1e-5)
    assert "3 of" in err  # the bad files are reported


def test_export_parity_and_onnx_agrees_on_real_full_resolution_image(tiny_run, run_cli, tmp_path):
    from skinlesion.predict import Predictor

    _, _, run = tiny_run
    real = shared("fullres", "ISIC_0024310.jpg")
    onnx = tmp_path / "m.onnx"
    code, out, err = run_cli("export", run, "--out", onnx, "--check", real)
    assert code == 0, err
    assert "max probability difference" in out and onnx.exists() and onnx.with_suffix(".json").exists()
    a = Predictor(run, backend="torch").predict(real)
    b = Predictor(onnx).predict(real)
    assert Predictor(onnx).backend == "onnx" and Predictor(run).backend == "torch"  # no current export beside the run
    # an export that no longer matches its bundle is never used: the bundle changed, the hash differs
    from skinlesion.bundle import onnx_is_current, update_config

    assert onnx_is_current(onnx, onnx.with_suffix(".safetensors"))
    update_config(onnx.with_suffix(".safetensors"), temperature=2.0)
    assert not onnx_is_current(onnx, onnx.with_suffix(".safetensors"))
    with pytest.raises(SkinLesionError, match="No current ONNX export"):
        Predictor(onnx, backend="onnx")
    diff = max(abs(a.probabilities[c] - b.probabilities[c]) for c in CODES)
    assert diff <= 1e-4 and a.top == b.top
    assert a.ood_score == pytest.approx(b.ood_score, rel=1e-3)


def test_export_refuses_a_model_that_fails_parity(tiny_run, tmp_path, monkeypatch):
    import skinlesion.export as ex

    _, _, run = tiny_run
    with pytest.raises(SkinLesionError, match="disagrees with PyTorch"):
        ex.export_onnx(run, tmp_path / "bad.onnx", tolerance=-1.0)
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.onnx.tmp").exists()


def test_gradcam_heat_map(tiny_run):
    from skinlesion.explain import overlay
    from skinlesion.predict import Predictor

    data, _, run = tiny_run
    img = Image.open(sorted((data / "images").glob("*.jpg"))[0]).convert("RGB")
    p = Predictor(run, backend="torch")
    heat = p.explain(img)
    assert heat.shape == (32, 32) and 0.0 <= heat.min() and heat.max() <= 1.0 and heat.std() > 0
    assert overlay(img, heat).size == img.size


def test_tta_averages_the_eight_views(tiny_run):
    """TTA = the log of the mean probability over the 8 flips/rotations, then the calibration."""
    from skinlesion.posthoc import calibrate
    from skinlesion.predict import Predictor
    from skinlesion.preprocess import tta_views

    data, _, run = tiny_run
    img = Image.open(sorted((data / "images").glob("*.jpg"))[0]).convert("RGB")
    p = Predictor(run, tta=True, backend="torch")
    batch = p.prep.batch([img])
    views = [p.forward(np.ascontiguousarray(v))[0] for v in tta_views(batch)]
    by_hand = np.mean([calibrate(v) for v in views], axis=0)  # mean probability of the views (T=1, no bias)
    combined = calibrate(p.logits(batch)[0])
    assert np.allclose(by_hand, combined, atol=1e-6)
    plain = Predictor(run, tta=False, backend="torch").predict_images([img], ["x"])[0]
    assert plain.probabilities != pytest.approx(p.predict_images([img], ["x"])[0].probabilities, abs=1e-6)


# ---- the shipped model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(default_model):
    from skinlesion.predict import Predictor

    return Predictor("default")  # ONNX Runtime when `make install` built the export (as in CI), PyTorch otherwise


@pytest.mark.parametrize("photo", ["astronaut", "chelsea", "coffee", "rocket"])
def test_ood_flags_everyday_photos(shipped, photo):
    from skimage import data as skdata

    img = Image.fromarray(getattr(skdata, photo)()).convert("RGB")
    pred = shipped.predict_images([img], [photo])[0]
    assert pred.out_of_distribution, (photo, pred.ood_score, shipped.ood[1]["threshold"])
    assert pred.warnings[0].startswith("out of distribution: score") and pred.refer
    assert pred.tier != "routine"  # referred; "soon" where its malignant probability reaches the threshold


def test_ood_passes_most_real_images_and_the_full_resolution_image(shipped):
    from skinlesion.data import load_dataset

    ds = load_dataset(shared("dermamnist28"))
    some = np.random.default_rng(0).choice(len(ds), 400, replace=False)
    preds = shipped.predict_images([ds.image(int(i)) for i in some], list(ds.meta["image_id"].iloc[some]))
    flagged = np.mean([p.out_of_distribution for p in preds])
    assert flagged <= 0.05, flagged
    full = shipped.predict(shared("fullres", "ISIC_0024310.jpg"))
    assert not full.out_of_distribution, full.ood_score


def test_ood_does_not_flag_a_round_dermatoscope_field_the_model_handles(shipped):
    """Black corners are how much real dermoscopy looks; the model trains on them, so they are no OOD on their own."""
    from skinlesion.data import load_dataset
    from skinlesion.preprocess import round_field

    ds = load_dataset(shared("dermamnist28"))
    some = np.random.default_rng(1).choice(len(ds), 300, replace=False)
    plain = [ds.image(int(i)).convert("RGB") for i in some]
    for radius in (0.87, 0.71):  # the robustness benchmark's severities 1 and 3 (0.71: the corners are black)
        fielded = [Image.fromarray(round_field(np.asarray(im), radius)) for im in plain]
        flagged = np.mean([p.out_of_distribution for p in shipped.predict_images(fielded, [str(i) for i in some])])
        assert flagged <= 0.2, (radius, flagged)  # before the fit included fields: 34 % and 100 %
    assert shipped.ood[1]["round_field_radii"], "the shipped OOD fit should include round fields"


def test_ood_score_is_the_mean_of_the_stage_ratios_and_a_model_fitted_before_keeps_the_largest():
    """A photo moderately far at every stage outscores a real image far at one stage only (issue 24:
    a mixup-trained member put a cat under the largest-ratio threshold); old configs keep their meaning."""
    import json

    from skinlesion.bundle import config_path, default_model_path, validate
    from skinlesion.errors import SkinLesionError
    from skinlesion.ood import fit, score

    rng = np.random.default_rng(0)
    dims = [4, 6]
    train, val = rng.normal(size=(3000, 10)), rng.normal(size=(3000, 10))
    tensors, cfg = fit(train, val, ["a", "b"], dims)
    assert cfg["aggregate"] == "mean"
    x = rng.normal(size=(50, 10))
    ratios = []
    for k, (lo, hi) in enumerate(((0, 4), (4, 10))):
        z = x[:, lo:hi] - tensors[f"ood.mean.{k}"]
        ratios.append(np.einsum("ij,jk,ik->i", z, tensors[f"ood.precision.{k}"].astype(np.float64), z) / cfg["stage_thresholds"][k])
    ratios = np.stack(ratios, 1)
    assert np.allclose(score(x, tensors, cfg), ratios.mean(1), rtol=1e-5)
    old = {k: v for k, v in cfg.items() if k != "aggregate"}
    assert np.allclose(score(x, tensors, old), ratios.max(1), rtol=1e-5)

    # a point at ratio r on every stage, and one at ratio r1 on the first stage only (at the second's mean: ratio 0)
    t_mean, t_max = cfg["threshold"], float(np.percentile(score(val, tensors, old), cfg["percentile"]))
    assert t_mean < t_max < 2 * t_mean
    r, r1 = (t_mean + t_max) / 2, (t_max + 2 * t_mean) / 2

    def at(ratio, k):
        u = np.ones(dims[k])
        return tensors[f"ood.mean.{k}"] + u * np.sqrt(ratio * cfg["stage_thresholds"][k] / float(u @ tensors[f"ood.precision.{k}"] @ u))

    everywhere = np.concatenate([at(r, 0), at(r, 1)])[None]
    one_stage = np.concatenate([at(r1, 0), tensors["ood.mean.1"]])[None]
    assert score(everywhere, tensors, cfg)[0] > t_mean > score(one_stage, tensors, cfg)[0]  # the mean flags the photo only
    assert score(one_stage, tensors, old)[0] > t_max > score(everywhere, tensors, old)[0]  # the largest: the other way round

    shipped = json.loads(config_path(default_model_path()).read_text())
    shipped["ood"] = {**shipped["ood"], "aggregate": "median"}
    with pytest.raises(SkinLesionError, match="ood.aggregate must be 'mean' or 'max'"):
        validate(shipped, check_backbones=False)


def test_ood_fit_with_round_fields_accepts_them_and_still_flags_photos(tiny_run):
    from dataclasses import replace

    import torch
    from skimage import data as skdata

    from skinlesion.bundle import load_model
    from skinlesion.data import load_dataset
    from skinlesion.models import forward_with_features
    from skinlesion.ood import dataset_features, features_with_fields, field_transform, fit_for_model, score

    data, split, run = tiny_run
    net, cfg = load_model(run / "best.safetensors")
    ds = load_dataset(data)
    man = pd.read_csv(split).set_index("image_id").loc[ds.meta["image_id"], "split"].to_numpy()
    tr, va = np.flatnonzero(man == "train"), np.flatnonzero(man != "train")
    names = list(cfg.ood["stages"])
    # every image twice: plain, then dealt in turn to the radii (rows 10-14: va[0::2] at 0.6, 15-19: va[1::2] at 0.8)
    feats = features_with_fields(net, cfg.prep, ds, va[:10], names, radii=(0.6, 0.8))
    assert len(feats) == 20
    assert np.allclose(
        feats[15], dataset_features(net, cfg.prep, ds, va[1:2], names, transform=field_transform(cfg.prep, 0.8))[0], atol=1e-5
    )

    fielded = dataset_features(net, cfg.prep, ds, va, names, transform=field_transform(cfg.prep, 0.7))
    with torch.inference_mode():
        photo = forward_with_features(net.eval(), torch.from_numpy(cfg.prep.batch([Image.fromarray(skdata.astronaut())])), names)[1].numpy()
    rates = {}
    for vignette in (0.0, 0.25):
        tensors, oc = fit_for_model(net, replace(cfg.prep, vignette=vignette), ds, tr, va)
        assert bool(oc["round_field_radii"]) == (vignette > 0)
        rates[vignette] = float(np.mean(score(fielded, tensors, oc) > oc["threshold"]))
        assert score(photo, tensors, oc)[0] > oc["threshold"]  # an everyday photo stays out of distribution
    assert rates[0.25] < rates[0.0] - 0.05, rates  # measured: 0.88 with the fields fitted, 1.0 without


def test_the_image_checks_share_the_clean_features_and_fit_the_same_numbers(tiny_run):
    """finish.fit_image_checks computes the clean images' stage features once for both fits (issue 24:
    the post-training fits in under a minute); sharing them must not change what is fitted."""
    from skinlesion.bundle import load_model
    from skinlesion.data import load_dataset
    from skinlesion.finish import fit_image_checks
    from skinlesion.ood import dataset_features, fit_for_model, sample_train

    data, split, run = tiny_run
    net, cfg = load_model(run / "best.safetensors")
    ds = load_dataset(data)
    man = pd.read_csv(split).set_index("image_id").loc[ds.meta["image_id"], "split"].to_numpy()
    tr, va = np.flatnonzero(man == "train"), np.flatnonzero(man != "train")
    names = list(cfg.ood["stages"])
    sample = sample_train(tr, max_train=len(tr) - 3)
    assert len(sample) == len(tr) - 3 and set(sample) <= set(tr)
    plain = (sample, dataset_features(net, cfg.prep, ds, sample, names), dataset_features(net, cfg.prep, ds, va, names))
    own = fit_for_model(net, cfg.prep, ds, tr, va, max_train=len(tr) - 3)
    shared_ = fit_for_model(net, cfg.prep, ds, tr, va, plain=plain)
    assert own[1]["threshold"] == pytest.approx(shared_[1]["threshold"], rel=1e-5)
    assert all(np.allclose(own[0][k], shared_[0][k], rtol=1e-4, atol=1e-5) for k in own[0])
    tensors, ood_cfg, _ = fit_image_checks(net, cfg.prep, ds, tr, va, val_features=plain[2])
    assert ood_cfg["n_train"] == min(len(tr), 2000) and tensors


def test_one_val_pass_gives_the_plain_and_the_tta_logits_and_hands_the_network_back_writable(tiny_run, tmp_path):
    """finish_run makes one pass over val for the TTA choice (issue 24): each view's logits, the plain view first.
    They must be the two separate passes' numbers, and the network (run channels-last) must come back in the
    default layout, which the safetensors writer needs."""
    import torch
    from safetensors.torch import save_file

    from skinlesion.bundle import load_model
    from skinlesion.data import load_dataset
    from skinlesion.evaluate import dataset_outputs
    from skinlesion.preprocess import tta_logits

    data, _, run = tiny_run
    net, cfg = load_model(run / "best.safetensors")
    ds = load_dataset(data)
    rows = np.arange(min(len(ds), 37))  # not a multiple of the batch: the views are joined across batches
    names = list(cfg.ood["stages"])
    per_view, f = dataset_outputs(net, cfg.prep, ds, rows, tta=True, views=True, stages=names, batch_size=16)
    plain, f_plain = dataset_outputs(net, cfg.prep, ds, rows, stages=names, batch_size=16)
    combined, _ = dataset_outputs(net, cfg.prep, ds, rows, tta=True, batch_size=16)
    assert per_view.shape == (8, len(rows), len(cfg.labels))
    assert np.array_equal(per_view[0], plain) and np.array_equal(f, f_plain)
    assert np.allclose(tta_logits(per_view), combined, atol=1e-6)
    assert not np.allclose(per_view[1], per_view[0])  # the other views are other images
    with torch.no_grad():  # the same numbers as the default layout, to float rounding
        x = torch.from_numpy(cfg.prep.batch([ds.image(int(i)) for i in rows[:16]]))
        assert np.allclose(net.eval()(x).numpy(), plain[:16], atol=1e-4)
    conv = next(p for p in net.parameters() if p.dim() == 4)
    assert conv.is_contiguous()
    save_file(dict(net.state_dict()), str(tmp_path / "w.safetensors"))  # refuses non-contiguous tensors


def test_committed_model_card_is_the_one_generated_from_the_shipped_bundle(default_model):
    from skinlesion.card import render

    from .conftest import REPO

    assert (REPO / "MODEL_CARD.md").read_text() == render("default"), "regenerate it: skinlesion card default --out MODEL_CARD.md"
    size = default_model.stat().st_size + default_model.with_suffix(".json").stat().st_size
    assert size <= 40 * 1024 * 1024


def test_shipped_card_numbers_are_recomputed_from_its_stored_oof_predictions(default_model):
    from skinlesion.bundle import load_config, read_tensors
    from skinlesion.card import oof_metrics
    from skinlesion.metrics import compute_metrics
    from skinlesion.posthoc import calibrate

    cfg = load_config(default_model)
    aux = read_tensors(default_model)
    if "oof.logits" not in aux:
        pytest.skip("the shipped model is not a cross-validated ensemble")
    m = oof_metrics(cfg, aux)
    for k in ("accuracy", "balanced_accuracy", "auc_macro", "f1_weighted", "nll"):
        assert m[k] == pytest.approx(cfg.metrics[k], abs=1e-9), k
    # and by hand, without the card's code: the image-only calibration on the stored logits
    if not cfg.metadata:
        probs = calibrate(aux["oof.logits"], cfg.temperature, cfg.class_bias)
        assert compute_metrics(probs, aux["oof.labels"].astype(int))["accuracy"] == pytest.approx(cfg.metrics["accuracy"], abs=1e-12)


def test_installed_package_reproduces_a_members_stored_oof_predictions(default_model):
    """Member i, as installed (fp16), on a sample of the fold it never saw, gives the OOF logits stored at assembly."""
    from skinlesion.bundle import load_config, load_model, read_tensors
    from skinlesion.data import load_dataset
    from skinlesion.evaluate import dataset_logits
    from skinlesion.posthoc import calibrate

    cfg = load_config(default_model)
    aux = read_tensors(default_model)
    if "oof.logits" not in aux:
        pytest.skip("the shipped model is not a cross-validated ensemble")
    ds = load_dataset(shared("dermamnist28"))
    assert np.array_equal(aux["oof.labels"].astype(int), ds.labels)  # stored in the dataset's order
    net, _ = load_model("default")
    folds = aux["oof.folds"].astype(int)
    for i, member in enumerate(cfg.members):
        pos = np.random.default_rng(i).choice(np.flatnonzero(folds == member.fold), 12, replace=False)
        logits = dataset_logits(net.members[i], cfg.prep, ds, pos, tta=cfg.tta, num_workers=0)
        got = calibrate(logits, cfg.temperature, cfg.class_bias)
        want = calibrate(aux["oof.logits"][pos], cfg.temperature, cfg.class_bias)
        assert np.abs(got - want).max() < 1e-3, (i, np.abs(got - want).max())


def test_predict_and_evaluate_agree_on_real_images_with_the_shipped_model(default_model, run_cli, tmp_path):
    """The same real DermaMNIST images (with their patient data) through `evaluate` and through the Predictor."""
    import pandas as pd

    from skinlesion.data import load_dataset
    from skinlesion.predict import Predictor

    folder = shared("dermamnist28")
    ds = load_dataset(folder)
    rows = ds.meta.iloc[[3, 250, 1000, 4000, 7000]]
    rows[["image_id"]].to_csv(tmp_path / "ids.csv", index=False)
    code, out, err = run_cli("evaluate", "--model", "default", "--data", folder, "--ids", tmp_path / "ids.csv", "--out", tmp_path / "ev")
    assert code == 0, err
    ev = pd.read_csv(tmp_path / "ev" / "predictions.csv").set_index("image_id")
    p = Predictor("default")
    assert p.tta  # the shipped model chose TTA on its out-of-fold predictions: both paths use the 8 views
    for _, r in rows.iterrows():
        meta = {k: r[k] for k in ("age", "sex", "localization")}
        got = p.predict(r["path"], meta=meta).probabilities
        assert np.allclose([got[c] for c in CODES], ev.loc[r["image_id"], list(CODES)].to_numpy(float), atol=1e-4), r["image_id"]


def test_robustness_benchmark_on_a_single_model_split_matches_the_predictor(tiny_run):
    """benchmarks/robustness.py --split: every corruption x severity on the split's held-out rows; its clean row is
    exactly what the product's Predictor says for those images (same preprocessing, calibration and OOD flag)."""
    from skinlesion.data import load_dataset
    from skinlesion.predict import Predictor

    from .conftest import benchmark

    data, split, run = tiny_run
    mod = benchmark("robustness")
    res = mod.run(str(run / "best.safetensors"), str(data), split=str(split), subset="test")
    ds = load_dataset(data)
    man = pd.read_csv(split).set_index("image_id").loc[ds.meta["image_id"], "split"].to_numpy()
    test = np.flatnonzero(man == "test")
    assert res["images"] == len(test)
    assert len(res["rows"]) == 1 + len(mod.CORRUPTIONS) * len(mod.SEVERITIES)
    preds = Predictor(run, tta=False, backend="torch").predict_images([ds.image(int(i)) for i in test], [str(i) for i in test])
    clean = res["rows"][0]
    assert clean["corruption"] == "none"
    assert clean["accuracy"] == pytest.approx(np.mean([CODES.index(p.top) == ds.labels[i] for p, i in zip(preds, test)]))
    assert clean["ood_flagged"] == pytest.approx(np.mean([p.out_of_distribution for p in preds]))


def test_the_shipped_config_is_strict_json():
    """No NaN or Infinity in the bundle's JSON (an undefined metric is null): browsers, jq and the API parse it."""
    import json

    from skinlesion.bundle import resolve_model_path

    text = resolve_model_path("default").with_suffix(".json").read_text()

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name} in the shipped config")

    json.loads(text, parse_constant=refuse)


def test_a_written_bundle_stores_an_undefined_metric_as_null(tiny_run, tmp_path):
    import json

    from skinlesion.bundle import load_config, update_config
    from skinlesion.train import copy_model

    _, _, run = tiny_run
    path = copy_model(run, tmp_path / "m.safetensors")
    cfg = load_config(path, check_backbones=False)
    update_config(path, metrics={**(cfg.metrics or {}), "undefined": float("nan")})
    saved = json.loads(path.with_suffix(".json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert saved["metrics"]["undefined"] is None


def test_the_onnx_export_hash_is_read_without_the_onnx_package(tmp_path):
    """The app's first page asks whether the ONNX export is current: the hash comes from the file's own protobuf
    fields (the graph skipped by its length), as onnx reads it, and neither onnx nor onnxruntime is imported."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from skinlesion.bundle import ONNX_HASH_KEY, onnx_hash

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])],
        [weight],
    )
    model = helper.make_model(graph, doc_string="d" * 300)
    for key, value in (("producer_note", "x" * 200), (ONNX_HASH_KEY, "ab" * 32), ("after", "é")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert onnx_hash(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}[ONNX_HASH_KEY] == "ab" * 32
    del model.metadata_props[1]
    onnx.save(model, str(tmp_path / "none.onnx"))
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    for name in ("none.onnx", "cut.onnx", "junk.onnx", "absent.onnx"):  # no hash recorded, or not an ONNX file
        assert onnx_hash(tmp_path / name) is None, name
    code = f"import sys; from skinlesion.bundle import onnx_hash; assert onnx_hash({str(path)!r}); print(sorted(m for m in sys.modules if m.startswith('onnx')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr + r.stdout
