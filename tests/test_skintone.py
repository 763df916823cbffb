"""ITA of the skin around the lesion: synthetic skin of known L*, b*; bands; the out-of-range flag."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion import skintone


def synthetic_skin(L, b, seed=0, size=(450, 600)):
    """A photo whose skin has CIELAB (L, a=12, b) with noise, and a dark brown lesion in the middle."""
    from skimage.color import lab2rgb

    rng = np.random.default_rng(seed)
    h, w = size
    lab = np.zeros((h, w, 3))
    lab[..., 0] = L + rng.normal(0, 1.5, (h, w))
    lab[..., 1] = 12 + rng.normal(0, 1.0, (h, w))
    lab[..., 2] = b + rng.normal(0, 1.0, (h, w))
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2 + rng.integers(-40, 40), w / 2 + rng.integers(-60, 60)
    disc = ((yy - cy) / (h * 0.22)) ** 2 + ((xx - cx) / (w * 0.2)) ** 2 < 1
    lab[disc] = [max(5.0, L - 35), 15, 12]
    return (np.clip(lab2rgb(lab), 0, 1) * 255).round().astype(np.uint8)


def true_ita(L, b):
    return float(np.degrees(np.arctan2(L - 50, b)))


@pytest.mark.parametrize("L,b", [(80, 14), (70, 18), (62, 20), (55, 22), (45, 20), (35, 18), (28, 14)])
def test_ita_within_3_degrees_on_synthetic_skin(L, b):
    t = skintone.measure(synthetic_skin(L, b))
    assert abs(t.ita - true_ita(L, b)) <= 3.0, (t.ita, true_ita(L, b))
    assert t.band == skintone.band(true_ita(L, b)) and t.uncertainty < 5


def test_bands():
    assert [skintone.band(a) for a in (60, 50, 30, 20, 0, -40)] == ["very light", "light", "intermediate", "tan", "brown", "dark"]


def test_dark_skin_outside_the_training_range_is_flagged_and_inside_never():
    rng = np.random.default_rng(1)
    train = [synthetic_skin(rng.uniform(60, 78), rng.uniform(12, 20), seed=i, size=(120, 160)) for i in range(20)]
    dist = skintone.distribution(train)
    assert sum(dist["counts"].values()) == 20 and dist["counts"]["dark"] == 0
    cfg = SimpleNamespace(metrics={"skin_tone": dist})
    inside = [synthetic_skin(rng.uniform(63, 75), rng.uniform(13, 19), seed=100 + i, size=(120, 160)) for i in range(20)]
    dark = [synthetic_skin(rng.uniform(25, 40), rng.uniform(10, 20), seed=200 + i, size=(120, 160)) for i in range(20)]
    flagged_inside = sum(skintone.flag(skintone.measure(x), cfg) is not None for x in inside)
    flagged_dark = sum(skintone.flag(skintone.measure(x), cfg) == skintone.FEW_DARK for x in dark)
    assert flagged_inside == 0 and flagged_dark >= 18
    # a bundle that never measured skin tone flags nothing and claims nothing
    assert skintone.flag(skintone.measure(dark[0]), SimpleNamespace(metrics={})) is None
    assert skintone.training_range(SimpleNamespace(metrics={})) is None


# ---- per-band subgroup metrics -------------------------------------------------------------------


def test_subgroup_metrics_per_ita_band_show_an_accuracy_that_differs_by_band():
    """Skin of three known tones, each image's band measured from its pixels; the predictions are right on 36/40
    very light, 30/40 tan and 5/20 brown images: the per-band table must say so, the brown group marked small."""
    from skinlesion.evaluate import subgroup_lines
    from skinlesion.metrics import subgroup_metrics

    tones = [(75, 14)] * 40 + [(58, 22)] * 40 + [(45, 20)] * 20  # ITA 60.8 (very light), 20.0 (tan), -14.0 (brown)
    images = [synthetic_skin(L, b, seed=i, size=(60, 80)) for i, (L, b) in enumerate(tones)]
    bands = skintone.band_labels(images)
    right = np.r_[np.arange(40) < 36, np.arange(40) < 30, np.arange(20) < 5]
    labels = np.arange(100) % 7
    pred = np.where(right, labels, (labels + 1) % 7)
    probs = np.full((100, 7), 0.1 / 6)
    probs[np.arange(100), pred] = 0.9
    sub = subgroup_metrics(probs, labels, pd.DataFrame({"skin_tone": bands}), pred=pred, n_boot=500)
    assert list(sub["attributes"]) == ["skin_tone"]  # no age, sex or site in this metadata: none made up
    rows = {r["group"]: r for r in sub["attributes"]["skin_tone"]}
    assert [r["group"] for r in sub["attributes"]["skin_tone"]] == ["very light", "tan", "brown"]  # lightest first
    assert [rows[g]["n"] for g in rows] == [40, 40, 20] and [rows[g]["small"] for g in rows] == [False, False, True]
    assert [rows[g]["accuracy"] for g in rows] == pytest.approx([0.9, 0.75, 0.25])
    assert rows["brown"]["accuracy_ci"][1] < rows["very light"]["accuracy_ci"][0]  # the difference is beyond chance
    for r in rows.values():
        assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
        assert 0 <= r["balanced_accuracy"] <= 1 and r["n_malignant"] > 0 and 0 <= r["malignant_sensitivity"] <= 1
    text = "\n".join(subgroup_lines(sub))
    assert "| skin tone (ITA band) |" in text and "| brown * | 20 | 0.250 (" in text and "| very light | 40 | 0.900 (" in text


def test_the_training_distribution_lines_give_band_counts_and_the_range():
    dist = skintone.distribution_of([60.0, 62.0, 45.0, 30.0, 12.0, -5.0, -40.0])
    assert dist["counts"] == {"very light": 2, "light": 1, "intermediate": 1, "tan": 1, "brown": 1, "dark": 1}
    text = "\n".join(skintone.distribution_lines(dist))
    assert "| dark | < -30 | 1 | 14.3% |" in text and "| very light | > 55 | 2 | 28.6% |" in text and skintone.FEW_DARK in text
    assert "not measured" in skintone.distribution_lines(None)[0]
    assert skintone.distribution_of([])["range"] is None  # no images: no range, nothing ever flagged


# ---- uploads outside the training range: predict's CSV and console, the REST API -----------------


def _jpeg(rgb, path):
    Image.fromarray(rgb).save(path, "JPEG", quality=92)
    return path


@pytest.fixture(scope="module")
def toned(default_model, tmp_path_factory):
    """A copy of the shipped bundle whose stored training skin tone is that of fair synthetic skin; an upload inside
    that range (fair skin) and its synthetic dark-skin copy (the same photo, the skin moved to L* 33, b* 15)."""
    import shutil

    from skinlesion.bundle import load_config, update_config

    root = tmp_path_factory.mktemp("toned")
    for suffix in (".safetensors", ".json"):
        shutil.copy(default_model.with_suffix(suffix), root / f"model{suffix}")
    model = root / "model.safetensors"
    cfg = load_config(model, check_backbones=False)
    rng = np.random.default_rng(4)
    train = [synthetic_skin(rng.uniform(62, 80), rng.uniform(10, 20), seed=300 + i, size=(240, 320)) for i in range(30)]
    dist = skintone.distribution_of([skintone.measure(x, cfg.prep).ita for x in train])
    update_config(model, metrics={**cfg.metrics, "skin_tone": dist})
    fair = synthetic_skin(70, 15, seed=7)  # ITA 53 (light)
    uploads = root / "uploads"
    uploads.mkdir()
    _jpeg(fair, uploads / "fair.jpg")
    _jpeg(skintone.recolour_skin(fair, 33, 15), uploads / "dark.jpg")
    return model, uploads


def test_predict_csv_and_console_say_few_dark_for_the_dark_copy_only(toned, run_cli, tmp_path):
    model, uploads = toned
    out = tmp_path / "pred.csv"
    code, stdout, err = run_cli("predict", model, uploads, "--out", out)
    assert code == 0, err
    rows = pd.read_csv(out, keep_default_na=False).set_index("image")
    rows.index = [Path(i).stem for i in rows.index]
    assert rows.loc["dark", "skin_tone"] == "dark" and float(rows.loc["dark", "ita"]) < -30
    assert rows.loc["fair", "skin_tone"] == "light" and abs(float(rows.loc["fair", "ita"]) - true_ita(70, 15)) < 5
    assert skintone.FEW_DARK in rows.loc["dark", "warnings"].lower()
    assert "saw few images" not in rows.loc["fair", "warnings"].lower()
    dark_line = next(line for line in stdout.splitlines() if line.lstrip().startswith("dark.jpg"))
    fair_line = next(line for line in stdout.splitlines() if line.lstrip().startswith("fair.jpg"))
    assert "saw few images of skin this dark" in dark_line and "saw few images" not in fair_line


def test_the_rest_api_says_few_dark_for_the_dark_copy_only(toned):
    import time

    from starlette.testclient import TestClient

    from skinlesion.serve.api import create_app
    from skinlesion.serve.settings import Settings

    model, uploads = toned
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in sorted(uploads.glob("*.jpg"))]
    with TestClient(create_app(Settings(model=str(model), heatmaps=False))) as c:
        t0 = time.monotonic()
        while c.get("/v1/ready").status_code != 200:  # the model loads in the background: wait for the state
            assert time.monotonic() - t0 < 300, c.get("/v1/ready").text
            time.sleep(0.1)
        r = c.post("/v1/analyse", files=files)
    assert r.status_code == 200, r.text
    got = {Path(row["image"]).stem: row for row in r.json()["images"]}
    assert got["dark"]["skin_tone"] == "dark" and skintone.FEW_DARK in got["dark"]["warnings"].lower()
    assert got["fair"]["skin_tone"] == "light" and "saw few images" not in got["fair"]["warnings"].lower()


def test_the_verdict_words_the_note_with_the_angle_and_the_training_range():
    from skinlesion.verdict import skin_tone_note

    cfg = SimpleNamespace(metrics={"skin_tone": {"range": [36.8, 130.5]}})
    note = skin_tone_note(SimpleNamespace(skin_tone_outside=True, ita=-42.4, skin_tone="dark"), cfg)
    assert note.startswith("This model saw few images of skin this dark: the analysis may be less reliable")
    assert "ITA -42 degrees, dark" in note and "1st percentile is 37 degrees" in note and note.endswith(".")
    assert skin_tone_note(SimpleNamespace(skin_tone_outside=False, ita=70.0, skin_tone="very light"), cfg) == ""


def test_info_of_a_model_shows_its_training_images_band_counts(toned, tmp_path, run_cli):
    from skinlesion.card import is_model, model_info

    model, uploads = toned
    assert is_model(model) and is_model(model.parent) and is_model("default") and not is_model(uploads) and not is_model(tmp_path)
    text = model_info(model)
    assert "| ITA band | degrees | images | share |" in text and "| very light | > 55 |" in text
    assert "Range (1st-99th percentile)" in text and skintone.FEW_DARK in text
    code, out, _ = run_cli("info", model)  # the CLI says the same
    assert code == 0 and "| ITA band | degrees | images | share |" in out and "classes:" in out
