"""Photo quality (issue 17): the check names what is wrong with a photo and how to retake it, apart from
"is this dermoscopy"; fitted for a stated false-alarm rate on clean images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from .conftest import shared


def _bright(im, f):
    return ImageEnhance.Brightness(im).enhance(f)


@pytest.fixture(scope="module")
def synthetic_check(tmp_path_factory):
    """The check fitted on synthetic lesions (image statistics only: no network), and held-out images."""
    from skinlesion.data import load_dataset
    from skinlesion.data.synthetic import write_synthetic
    from skinlesion.preprocess import Preprocess
    from skinlesion.quality import fit

    data = write_synthetic(tmp_path_factory.mktemp("quality"), n_lesions=330, layout="flat", size=(96, 72), seed=11)
    ds = load_dataset(data)
    order = np.random.default_rng(0).permutation(len(ds))
    train, held = order[: len(ds) // 3], order[len(ds) // 3 :]  # about 150 to train on, 220 to set thresholds, 80 to test
    prep = Preprocess(input_size=32)
    tensors, config = fit(None, prep, ds, train, held[:220], [])
    return ds, prep, tensors, config, held[220:]


def _named(prep, tensors, config, images):
    from skinlesion.quality import check, features, working_image

    x = features([working_image(prep, im) for im in images])
    return check(x, [im.size for im in images], tensors, config)


def test_the_check_names_over_and_underexposure_and_blur_on_synthetic_lesions(synthetic_check):
    ds, prep, tensors, config, test = synthetic_check
    assert len(test) >= 40
    clean = [ds.image(int(i)) for i in test]
    cases = {
        "overexposed": [_bright(im, 1.8) for im in clean],
        "underexposed": [_bright(im, 0.45) for im in clean],
        "blurred": [im.filter(ImageFilter.GaussianBlur(4)) for im in clean],
    }
    for problem, images in cases.items():
        named = _named(prep, tensors, config, images)
        rate = np.mean([problem in n for n in named])
        assert rate >= 0.8, (problem, rate)
    flagged = np.mean([bool(n) for n in _named(prep, tensors, config, clean)])
    assert flagged <= 0.15, flagged  # a handful of held-out images: the target per problem is 0.7 %


def test_every_problem_has_advice_and_the_config_states_its_false_alarm_rate(synthetic_check):
    from skinlesion.quality import PROBLEMS, advice

    _, _, tensors, config, _ = synthetic_check
    assert set(config["problems"]) == set(PROBLEMS)
    assert config["target_false_alarm"] == pytest.approx(0.007)
    for p in PROBLEMS:
        a = advice(p)
        assert a.startswith("Photo quality: ") and "retake" in a or "move closer" in a, a
        assert 0 <= config["problems"][p]["false_alarm_held_out"] <= 1


def test_a_photo_smaller_than_the_source_size_is_too_small(synthetic_check):
    _, prep, tensors, config, _ = synthetic_check
    tiny = Image.new("RGB", (20, 15), (180, 140, 120))
    assert "too_small" in _named(prep, tensors, config, [tiny])[0]


def test_too_few_held_out_images_fit_no_check():
    from skinlesion.quality import fit

    assert fit(None, None, None, np.arange(500), np.arange(150), []) == ({}, None)


def test_shared_clean_features_fit_the_same_check(tiny_run, synthetic_check):
    """The clean images' network features, computed once by the caller (the OOD fit's), give the same
    check as computing them here; features of other rows than ``train_positions`` are refused."""
    from skinlesion.bundle import load_model
    from skinlesion.ood import dataset_features
    from skinlesion.quality import fit

    ds, _, _, _, held = synthetic_check
    net, cfg = load_model(tiny_run[2] / "best.safetensors")
    names = list(cfg.ood["stages"])
    order = np.random.default_rng(1).permutation(len(ds))
    train, val = order[:60], order[60:300]
    clean = (dataset_features(net, cfg.prep, ds, train, names), dataset_features(net, cfg.prep, ds, val, names))
    own_tensors, own_cfg = fit(net, cfg.prep, ds, train, val, names)
    shared_tensors, shared_cfg = fit(net, cfg.prep, ds, train, val, names, clean_features=clean)
    assert own_cfg is not None and own_cfg["n_train"] == 60
    for k in own_tensors:
        assert np.allclose(own_tensors[k], shared_tensors[k], rtol=1e-4, atol=1e-4), k
    for p in own_cfg["problems"]:
        assert own_cfg["problems"][p]["threshold"] == pytest.approx(shared_cfg["problems"][p]["threshold"], abs=1e-3)
    with pytest.raises(ValueError):
        fit(net, cfg.prep, ds, train, val, names, clean_features=(clean[0][:59], clean[1]))


def test_each_problem_is_fitted_on_every_training_image_once_dealt_to_the_severities(monkeypatch, synthetic_check):
    import skinlesion.corruptions as corruptions
    from skinlesion import quality

    ds, prep, _, _, _ = synthetic_check
    seen = []
    real = corruptions.corrupt

    def spy(images, name, severity, seed=0):
        seen.append((name, severity, len(images)))
        return real(images, name, severity, seed=seed)

    monkeypatch.setattr(corruptions, "corrupt", spy)
    quality.fit(None, prep, ds, np.arange(31), np.arange(31, 31 + quality.MIN_HELD_OUT), [])
    per_problem = {}
    for name, severity, n in seen:
        per_problem.setdefault(name, []).append((severity, n))
    assert set(per_problem) == {c for _, _, c in quality.PROBLEMS.values()}
    for name, parts in per_problem.items():
        assert [s for s, _ in parts] == list(quality.FIT_SEVERITIES) and sum(n for _, n in parts) == 31, (name, parts)


# ---- the shipped model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(default_model):
    from skinlesion.predict import Predictor

    return Predictor("default")


def test_the_shipped_check_names_exposure_at_middle_severity_and_rarely_flags_clean_photos(shipped):
    from skinlesion.corruptions import corrupt
    from skinlesion.data import load_dataset

    assert shipped.quality is not None, "the shipped model should carry the photo-quality check"
    ds = load_dataset(shared("dermamnist28"))
    some = np.random.default_rng(3).choice(len(ds), 200, replace=False)
    clean = [shipped.prep.to_source(ds.image(int(i))) for i in some]

    def rate(images, problem=None):
        preds = shipped.predict_images(images, [str(i) for i in range(len(images))])
        if problem is None:
            return np.mean([bool(p.quality) for p in preds])
        assert all(p.quality_advice for p in preds if problem in p.quality)  # each named problem comes with its advice
        return np.mean([problem in p.quality for p in preds])

    assert rate(clean) <= 0.08  # 3.7 % held out when fitted; these 200 include the model's training images
    assert rate(corrupt(clean, "brighter", 3), "overexposed") >= 0.8
    assert rate(corrupt(clean, "darker", 3), "underexposed") >= 0.8
    assert rate(corrupt(clean, "blur", 5), "blurred") >= 0.8  # at severity 3 a 28 px blur hides in real lesions' spread


def test_the_shipped_ood_score_accepts_exposure_and_contrast_changes_it_handles(shipped):
    from skinlesion.corruptions import corrupt
    from skinlesion.data import load_dataset

    ds = load_dataset(shared("dermamnist28"))
    some = np.random.default_rng(4).choice(len(ds), 200, replace=False)
    clean = [shipped.prep.to_source(ds.image(int(i))) for i in some]
    assert shipped.ood[1].get("photometric"), "the shipped OOD fit should include exposure and contrast changes"
    for name in ("brighter", "darker", "lower_contrast", "higher_contrast"):
        preds = shipped.predict_images(corrupt(clean, name, 3), [str(i) for i in range(len(clean))])
        flagged = np.mean([p.out_of_distribution for p in preds])
        assert flagged <= 0.2, (name, flagged)  # before: brighter 90 %, higher contrast 51 % flagged
