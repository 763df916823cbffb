"""One verdict for an image that is not dermoscopy (issue 28, items 1 and 2): the CSV, the console, the
report and the API say "not analysed" with the reason that fired, and carry no tier; the probabilities
stay in their columns, marked unreliable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.classes import CODES, HAM10000


def _pred(*, ood, reasons=(), score=None, tier="routine"):
    from skinlesion.predict import Prediction

    probs = dict(zip(CODES, [0.01, 0.02, 0.03, 0.0, 0.02, 0.9, 0.02]))  # nv 0.90: a routine tier if it stood
    mal = sum(p for c, p in probs.items() if HAM10000.get(c).malignant)
    return Prediction(
        name="x.jpg",
        probabilities=probs,
        top="nv",
        top_probability=0.9,
        malignant_probability=mal,
        tier=tier,
        out_of_distribution=ood,
        ood_reasons=list(reasons),
        ood_score=score,
    )


def _cfg():
    from skinlesion.bundle import Member, ModelConfig

    return ModelConfig(
        preprocess={"input_size": 32},
        members=[Member("resnet18")],
        tier={"malignant_threshold": 0.13},
        conformal={"confidence": 0.9},
        ood={"threshold": 1.3},
    )


def test_an_out_of_distribution_verdict_has_no_tier_and_says_not_analysed():
    from skinlesion.verdict import NOT_ANALYSED, verdict

    pred = _pred(ood=True, reasons=["colour"])
    pred.verdict = v = verdict(pred, _cfg())
    assert v.tier is None and not v.analysed and v.headline == NOT_ANALYSED
    assert "almost no colour" in v.reason and "score" not in v.reason
    assert v.analysis.startswith("Routine")  # what the unreliable analysis would say, for "Analyse anyway" only
    row = pred.row()
    assert row["tier"] == "" and row["verdict"].startswith(NOT_ANALYSED)
    assert row["nv"] == pytest.approx(0.9) and row["summary"].startswith("Unreliable") and "below" not in row["summary"]
    words = " ".join(v.lines()).lower()
    assert "routine" not in words and "benign" not in words and "harmless" not in words, words
    analysed = _pred(ood=False)
    analysed.verdict = verdict(analysed, _cfg())
    assert analysed.row()["tier"] == "routine" and analysed.verdict.analysed


def test_the_reason_is_the_check_that_fired():
    from skinlesion.verdict import verdict

    far = _pred(ood=True, reasons=["distance"], score=2.5)
    v = verdict(far, _cfg())
    assert "score 2.50 > threshold 1.30" in v.reason and "colour" not in v.reason
    both = verdict(_pred(ood=True, reasons=["colour", "distance"], score=5.0), _cfg())
    assert "almost no colour" in both.reason and "score 5.00" in both.reason


def test_noise_is_far_by_distance_not_colourless():
    """Averaging to a 28 px source greys out RGB noise; the colour floor measures the upload itself."""
    from skinlesion.ood import chroma, colourless, upload_chroma

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (450, 600, 3), dtype=np.uint8))
    grey = noise.convert("L").convert("RGB")
    assert chroma(noise.resize((28, 28), Image.BILINEAR)) < 0.05 < 0.4 < upload_chroma(noise)
    assert colourless([noise, grey], {"min_chroma": 0.008}).tolist() == [False, True]
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), dtype=np.uint8))
    assert upload_chroma(big) > 0.4  # taken by nearest neighbour, never averaged


@pytest.fixture(scope="module")
def shipped(default_model):
    from skinlesion.predict import Predictor

    return Predictor("default")


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    from importlib import resources

    d = tmp_path_factory.mktemp("odd")
    Image.new("RGB", (600, 450), "white").save(d / "white.jpg", quality=95)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (450, 600, 3), dtype=np.uint8)).save(d / "noise.png")
    sample = resources.files("skinlesion") / "samples" / "ISIC_0024310.jpg"
    Image.open(sample).convert("L").save(d / "grey.jpg", quality=95)
    return d


def test_shipped_model_gives_noise_the_distance_reason_and_greyscale_the_colour_reason(shipped, odd_images):
    noise, grey = shipped.predict_images([Image.open(odd_images / n) for n in ("noise.png", "grey.jpg")], ["noise", "grey"])
    assert noise.out_of_distribution and noise.ood_reasons == ["distance"], (noise.ood_score, noise.warnings)
    assert "score" in noise.verdict.reason and "colour" not in noise.verdict.reason
    assert not any("colour" in w for w in noise.warnings), noise.warnings
    assert grey.out_of_distribution and "colour" in grey.ood_reasons
    assert grey.verdict.reason.startswith("it has almost no colour")


def test_predict_csv_and_console_say_not_analysed_for_a_white_jpeg(default_model, odd_images, run_cli, tmp_path):
    from skinlesion.verdict import NOT_ANALYSED

    code, out, err = run_cli("predict", "default", odd_images / "white.jpg", "--out", tmp_path / "p.csv")
    assert code == 0, err
    row = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).iloc[0]
    assert row["tier"] == "" and row["verdict"].startswith(NOT_ANALYSED) and "almost no colour" in row["verdict"]
    assert row["summary"].startswith("Unreliable") and float(row["nv"]) >= 0  # the numbers stay, marked
    line = next(ln for ln in out.splitlines() if "white.jpg" in ln)
    assert "not analysed" in line and not any(t in line for t in ("soon", "routine", "unsure")), line


def test_the_report_of_an_image_not_analysed_has_no_triage(shipped, odd_images):
    from skinlesion.report import report_html
    from skinlesion.verdict import NOT_ANALYSED

    img = Image.open(odd_images / "white.jpg")
    pred = shipped.predict_images([img], ["white.jpg"])[0]
    page = report_html(shipped, pred, img)
    assert NOT_ANALYSED in page and "Triage:" not in page
