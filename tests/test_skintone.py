"""ITA of the skin around the lesion: synthetic skin of known L*, b*; bands; the out-of-range flag."""

from types import SimpleNamespace

import numpy as np
import pytest

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
