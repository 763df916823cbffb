"""Photo quality at the photo's own resolution (issue 27): blur and exposure named on the upload as it came,
not on the 28-pixel image the model sees; the thresholds are the module's, set on the real full-resolution
sample and its synthetic copies (benchmarks/fullres_quality.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from .conftest import benchmark


@pytest.fixture(scope="module")
def sample():
    from skinlesion.sample import bundled_path

    img = Image.open(bundled_path()).convert("RGB")
    assert img.size == (600, 450)  # the real HAM10000 photo the thresholds were set on
    return img


@pytest.fixture(scope="module")
def bench():
    return benchmark("fullres_quality")


def test_the_sample_blurred_by_sigma_6_is_named_blurred_and_the_sample_itself_is_not(sample, bench):
    from skinlesion.photo_quality import BLUR_BELOW, check

    plain = check(sample, 28)
    assert plain.checked and plain.problems == [], plain
    assert plain.measures["sharpness"] > 1.4 * BLUR_BELOW  # far from the threshold, not just under it
    blurred = check(bench.gaussian_blur(sample, 6), 28)
    assert blurred.checked and blurred.problems == ["blurred"], blurred
    assert blurred.measures["sharpness"] < BLUR_BELOW


def test_over_and_underexposed_copies_of_the_sample_are_named(sample):
    from skinlesion.corruptions import corrupt
    from skinlesion.photo_quality import check

    for severity in (2, 3, 4):
        (bright,) = corrupt([sample], "brighter", severity)
        (dark,) = corrupt([sample], "darker", severity)
        assert check(bright, 28).problems == ["overexposed"], (severity, check(bright, 28))
        assert check(dark, 28).problems == ["underexposed"], (severity, check(dark, 28))


def test_synthetic_copies_meet_the_targets(sample, bench):
    """A small draw of the benchmark's populations: <= 5 % false alarms unaltered, >= 90 % named corrupted."""
    from skinlesion.corruptions import CORRUPTIONS
    from skinlesion.photo_quality import check

    n = 20
    unaltered = bench.copies(sample, n, seed=1)
    assert len({im.size for im in unaltered}) > 5  # crops, rotations and scale changes: not one photo 20 times
    assert np.mean([bool(check(im, 28).problems) for im in unaltered]) <= 0.05
    populations = {
        "blurred": bench.copies(sample, n, seed=1, corruption=lambda im: bench.gaussian_blur(im, 4)),
        "overexposed": bench.copies(sample, n, seed=1, corruption=lambda im: CORRUPTIONS["brighter"](2)(im, None)),
        "underexposed": bench.copies(sample, n, seed=1, corruption=lambda im: CORRUPTIONS["darker"](2)(im, None)),
    }
    for problem, images in populations.items():
        assert np.mean([problem in check(im, 28).problems for im in images]) >= 0.9, problem


def test_a_28_pixel_upload_is_not_measured_at_full_resolution(monkeypatch):
    from skinlesion import photo_quality

    def fail(img):
        raise AssertionError(f"measured a {img.size} photo")

    monkeypatch.setattr(photo_quality, "measure", fail)
    tiny = Image.new("RGB", (28, 28), (190, 140, 120))
    result = photo_quality.check(tiny, 28)
    assert not result.checked and result.problems == [] and result.measures == {}
    assert not photo_quality.applies((255, 600), 28) and photo_quality.applies((256, 256), 28)
    assert not photo_quality.applies((300, 300), 384)  # no larger than a model's input: nothing more to see
    with pytest.raises(AssertionError, match="measured a"):
        photo_quality.check(Image.new("RGB", (300, 300), (190, 140, 120)), 28)  # the stub is really in the path


def test_a_problem_both_checks_name_is_said_once():
    from skinlesion.photo_quality import PhotoQuality
    from skinlesion.quality import advice
    from skinlesion.verdict import quality_advice

    photo = PhotoQuality(size=(600, 450), checked=True, problems=["blurred", "underexposed"], measures={})
    codes, sentences = quality_advice(["blurred", "off_centre"], photo)
    assert codes == ["blurred", "off_centre", "underexposed"]
    assert len(sentences) == 3 and sum("blurred" in s for s in sentences) == 1
    assert sentences[0] == advice("blurred")
    assert "seen on the photo as uploaded, 600x450 px" in sentences[2] and "retake" in sentences[2]
    unchecked = PhotoQuality(size=(28, 28), checked=False)
    assert quality_advice(["blurred"], unchecked) == (["blurred"], [advice("blurred")])
    assert quality_advice([], None) == ([], [])


def test_the_predictor_names_full_resolution_blur_once_in_its_row(default_model, sample, bench, monkeypatch):
    """Through the predictor (the CSV's, API's and app's path): the blurred sample is named blurred once,
    with the measured numbers and how the thresholds were set; a 28x28 upload is not measured."""
    from skinlesion import photo_quality
    from skinlesion.predict import ROW_COLUMNS, Predictor

    p = Predictor(default_model)
    blurred = bench.gaussian_blur(sample, 6)
    pred = p.predict_images([blurred, sample], ["blurred.jpg", "sample.jpg"])
    row = pred[0].row()
    assert row["quality"].split("|").count("blurred") == 1, row["quality"]
    assert sum("blurred" in a for a in pred[0].quality_advice) == 1, pred[0].quality_advice
    assert any("blurred" in a for a in pred[0].verdict.advice)  # the app's and report's words
    assert "not fitted to this model" in row["photo_quality"] and "600x450" in row["photo_quality"]
    assert "blurred" not in pred[1].quality and pred[1].photo_quality.checked
    assert list(row) == ROW_COLUMNS

    calls = []
    monkeypatch.setattr(photo_quality, "measure", lambda img: calls.append(img.size) or {})
    tiny = p.predict_images([Image.new("RGB", (28, 28), (190, 140, 120))], ["tiny.png"])[0]
    assert calls == [] and not tiny.photo_quality.checked
    assert tiny.row()["photo_quality"].startswith("not measured: 28x28 px")


def test_files_reduced_as_decoded_keep_the_full_resolution_check(default_model, sample, bench, tmp_path, run_cli):
    """predict's files (and the service's) are reduced to the model's source image as they are decoded: the
    check on the photo as uploaded is made before that, so the CSV and the console still name the blur."""
    from skinlesion.predict import Predictor, predict_files

    path = tmp_path / "blurred.jpg"
    bench.gaussian_blur(sample, 6).save(path, quality=95)
    row = predict_files(Predictor(default_model), [path])[0]
    assert "blurred" in row["quality"].split("|") and "600x450" in row["photo_quality"], row
    code, out, _ = run_cli("predict", default_model, path)
    assert code == 0 and "blurred" in out.splitlines()[1], out
