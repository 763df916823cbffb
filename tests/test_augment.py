"""The training augmentation on the device, batched (skinlesion.augment; issue: feed the GPU).

It must do what the per-sample path (Preprocess.train_transform: PIL + torchvision on a worker) does:
image by image against torchvision's tensor operations with the same parameters, the same parameter
distribution as today's draws (a two-sample test per parameter), the same pixel statistics, the same
batch for the same seed, and training that resumes exactly and learns as well.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from skinlesion.augment import NO_FIELD, BatchAugment, draw, fold, uniforms
from skinlesion.preprocess import Preprocess, round_field

TINY = dict(backbone="resnet18", input_size=32, batch_size=16, lr=3e-3, patience=20, progress=False, num_workers=0)


def _smooth(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 images (size x size x 3) with colour gradients, blobs and noise: every colour operation acts on them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 2 * np.pi, 3)
        base = np.stack([150 + 80 * np.sin(6 * xx + a), 120 + 70 * np.cos(5 * yy + b), 100 + 60 * np.sin(4 * (xx + yy) + c)], -1)
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None] * rng.uniform(-90, 30, 3)
        out.append(np.clip(base + blob + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def _reference(prep: Preprocess, pixels: np.ndarray, d, b: int) -> torch.Tensor:
    """Image ``b`` augmented with the drawn parameters through torchvision's own tensor operations, step by step in
    the per-sample path's order: crop + antialiased resize (uint8), flips, ColorJitter's four operations in the image's
    order, the quarter turns, round_field, normalisation."""
    import torch.nn.functional as F
    import torchvision.transforms.v2.functional as TF

    s, spec = prep.input_size, prep.augment_spec()
    x = torch.from_numpy(pixels[b]).permute(2, 0, 1)
    t, left, h, w = int(d.top[b]), int(d.left[b]), int(d.height[b]), int(d.width[b])
    y = F.interpolate(x[None, :, t : t + h, left : left + w].contiguous(), (s, s), mode=prep.interpolation, antialias=True)[0] / 255
    if d.hflip[b]:
        y = TF.horizontal_flip(y)
    if d.vflip[b]:
        y = TF.vertical_flip(y)
    ops = {
        0: ("brightness", TF.adjust_brightness, d.brightness),
        1: ("contrast", TF.adjust_contrast, d.contrast),
        2: ("saturation", TF.adjust_saturation, d.saturation),
        3: ("hue", TF.adjust_hue, d.hue),
    }
    for op in d.order[b]:
        name, fn, factors = ops[int(op)]
        if spec[name] is not None:
            y = fn(y, float(factors[b]))
    y = torch.rot90(y, int(d.rot[b]), dims=(-2, -1))
    if d.radius[b] < NO_FIELD:
        keep = round_field(np.full((s, s, 3), 255, np.uint8), radius=float(d.radius[b]))[..., 0] > 0
        y = y * torch.from_numpy(keep)
    return (y - torch.tensor(prep.mean).view(3, 1, 1)) / torch.tensor(prep.std).view(3, 1, 1)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"jitter": 0.5, "contrast": 0.9, "brightness": 0.9, "vignette": 1.0, "scale": (0.3, 1.0)},
        {"interpolation": "bilinear", "input_size": 96},  # upsampling: no antialiasing widening
        {"brightness": 0.0, "contrast": 0.0, "jitter": 0.0, "vignette": 0.0},
    ],
)
def test_each_image_is_what_torchvision_makes_of_it_with_its_parameters(kw):
    pixels = _smooth(48, 72)
    prep = Preprocess(**{"input_size": 48, "source_size": 72, **kw})
    pos = np.arange(1000, 1048)
    d = draw(prep.augment_spec(), 3, 5, pos, 72, 72)
    ref = torch.stack([_reference(prep, pixels, d, b) for b in range(len(pos))])
    one_level = 1 / 255 / min(prep.std)
    loop = BatchAugment(prep, seed=3, resample="loop")(torch.from_numpy(pixels), 5, pos)
    assert loop.shape == (48, 3, prep.input_size, prep.input_size) and loop.dtype == torch.float32
    assert float((loop - ref).abs().max()) < 1e-4  # the CPU path: torch's own uint8 resize, then the same arithmetic
    # the GPU path resamples with matrix products (rounded to levels after each pass, as the uint8 kernel does):
    # a few pixels land a level or two away (amplified up to 1.9x by a contrast factor), the mean stays within 0.03 level
    mm = BatchAugment(prep, seed=3, resample="matmul")(torch.from_numpy(pixels), 5, pos)
    err = (mm - ref).abs()
    assert float(err.max()) <= 5 * one_level and float(err.mean()) < 0.03 * one_level


def test_geometry_of_the_two_resamplers_agrees_to_two_levels_on_noise():
    """On uniform noise (the worst case for bicubic overshoot and rounding) over non-square sources."""
    rng = np.random.default_rng(1)
    pixels = torch.from_numpy(rng.integers(0, 256, (24, 60, 90, 3), dtype=np.uint8))
    for interpolation in ("bicubic", "bilinear"):
        for size in (40, 120):
            prep = Preprocess(input_size=size, interpolation=interpolation, brightness=0, contrast=0, jitter=0, vignette=0)
            a = BatchAugment(prep, resample="loop")(pixels, 0, np.arange(24))
            b = BatchAugment(prep, resample="matmul")(pixels, 0, np.arange(24))
            levels = ((a - b).abs() * torch.tensor(prep.std).view(1, 3, 1, 1) * 255).round()
            assert float(levels.max()) <= 2 and float((levels > 0).float().mean()) < 0.02, (interpolation, size)


def test_folding_flips_and_quarter_turns_into_a_transpose_is_exact():
    y = torch.arange(20.0).view(1, 4, 5)
    for k in range(4):
        for h in (False, True):
            for v in (False, True):
                want = torch.rot90(torch.flip(y, [-1]) if h else y, 0, (-2, -1))
                want = torch.rot90(torch.flip(want, [-2]) if v else want, k, (-2, -1))
                h2, v2, t = (bool(z) for z in fold(np.array([h]), np.array([v]), np.array([k])))
                got = torch.flip(y, [-1]) if h2 else y
                got = torch.flip(got, [-2]) if v2 else got
                got = got.transpose(-1, -2) if t else got
                assert torch.equal(got, want), (k, h, v)
    # and torch's quarter turn is PIL's rotate(90 k), the per-sample path's
    from PIL import Image

    arr = _smooth(1, 16)[0]
    for k in range(4):
        pil = np.asarray(Image.fromarray(arr).rotate(90 * k))
        assert np.array_equal(torch.rot90(torch.from_numpy(arr), k, (0, 1)).numpy(), pil)


def _run_per_sample(prep: Preprocess, images, monkeypatch, seed: int = 7):
    """Today's per-sample path (train_transform under ImageSet's (seed, epoch, index) seeding) on each of ``images``
    (PIL), with its parameters captured from torchvision's transforms, PIL's rotate and round_field: (outputs, records)."""
    from PIL import Image
    from torchvision.transforms import v2 as T

    import skinlesion.preprocess as P
    from skinlesion.data.loader import epoch_seed

    rec: dict = {}

    def spy(cls, method, key, value):
        real = getattr(cls, method)

        def wrapper(self, *a, **k):
            out = real(self, *a, **k)
            rec[key] = value(out, a, k)
            return out

        monkeypatch.setattr(cls, method, wrapper)

    spy(T.RandomResizedCrop, "make_params", "crop", lambda out, a, k: out)
    spy(T.ColorJitter, "make_params", "jitter", lambda out, a, k: out)
    spy(T.RandomHorizontalFlip, "transform", "hflip", lambda out, a, k: True)
    spy(T.RandomVerticalFlip, "transform", "vflip", lambda out, a, k: True)
    spy(Image.Image, "rotate", "rot", lambda out, a, k: int(a[0]) // 90)
    real_field = P.round_field
    monkeypatch.setattr(P, "round_field", lambda arr, radius: rec.__setitem__("radius", radius) or real_field(arr, radius))
    tf = prep.train_transform()
    outputs, records = [], []
    for i, img in enumerate(images):
        rec.clear()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(seed, 0, i))
            outputs.append(tf(img))
        records.append(dict(rec))
    monkeypatch.undo()
    return torch.stack(outputs), records


def _as_draws(records):
    """The per-sample path's captured parameters as the batched path's :class:`Draws`."""
    from skinlesion.augment import Draws

    crop, jit = [r["crop"] for r in records], [r["jitter"] for r in records]

    def col(rows, key):
        return np.array([r[key] for r in rows])

    return Draws(
        top=col(crop, "top"),
        left=col(crop, "left"),
        height=col(crop, "height"),
        width=col(crop, "width"),
        hflip=np.array([r.get("hflip", False) for r in records]),
        vflip=np.array([r.get("vflip", False) for r in records]),
        rot=np.array([r.get("rot", 0) for r in records]),
        order=np.stack([j["fn_idx"].numpy() for j in jit]),
        brightness=col(jit, "brightness_factor"),
        contrast=col(jit, "contrast_factor"),
        saturation=col(jit, "saturation_factor"),
        hue=col(jit, "hue_factor"),
        radius=np.array([r.get("radius", NO_FIELD) for r in records]),
    )


def _per_sample_draws(prep: Preprocess, n: int, size: int, monkeypatch) -> pd.DataFrame:
    from PIL import Image

    img = Image.fromarray(_smooth(1, size)[0])
    d = _as_draws(_run_per_sample(prep, [img] * n, monkeypatch)[1])
    return _table(d, size)


def _batched_draws(prep: Preprocess, n: int, size: int) -> pd.DataFrame:
    return _table(draw(prep.augment_spec(), 7, 0, np.arange(n), size, size), size)


def _table(d, size: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "area": d.height * d.width / size**2,
            "aspect": d.width / d.height,
            "top": d.top / (size - d.height + 1),
            "hflip": d.hflip,
            "vflip": d.vflip,
            "rot": d.rot,
            "brightness": d.brightness,
            "contrast": d.contrast,
            "saturation": d.saturation,
            "hue": d.hue,
            "first_op": d.order[:, 0],
            "brightness_slot": np.argmax(d.order == 0, axis=1),
            "radius": d.radius,
        }
    )


CONTINUOUS = ("area", "aspect", "top", "brightness", "contrast", "saturation", "hue")
DISCRETE = ("hflip", "vflip", "rot", "first_op", "brightness_slot")


def _compare(today: pd.DataFrame, batched: pd.DataFrame) -> dict:
    """p-values of a two-sample test per parameter (Kolmogorov-Smirnov; chi-square for the discrete ones)."""
    from scipy import stats

    p = {k: stats.ks_2samp(today[k], batched[k]).pvalue for k in CONTINUOUS}
    for k in DISCRETE:
        levels = sorted(set(today[k]) | set(batched[k]))
        table = np.array([[np.sum(df[k] == v) for v in levels] for df in (today, batched)])
        p[k] = stats.chi2_contingency(table).pvalue
    field_today, field_batched = today["radius"] < NO_FIELD, batched["radius"] < NO_FIELD
    p["field"] = stats.chi2_contingency([[field_today.sum(), (~field_today).sum()], [field_batched.sum(), (~field_batched).sum()]]).pvalue
    p["radius"] = stats.ks_2samp(today["radius"][field_today], batched["radius"][field_batched]).pvalue
    return p


@pytest.mark.parametrize("kw", [{}, {"scale": (0.3, 1.0), "brightness": 0.9, "jitter": 0.5, "vignette": 0.6}])
def test_parameters_are_drawn_from_the_per_sample_path_s_distribution(kw, monkeypatch):
    """3,000 of today's draws against 30,000 batched ones, per parameter; every test passes at p > 0.001, and the
    configured ranges hold exactly. (Deterministic: the seeds are fixed. Narrowing any one range by a tenth, e.g.
    brightness 0.4 -> 0.36, or the crop scale from 0.75 to 0.78, takes its p-value below 1e-6.)"""
    size = 96
    prep = Preprocess(input_size=16, source_size=size, **kw)
    today = _per_sample_draws(prep, 3000, size, monkeypatch)
    batched = _batched_draws(prep, 30000, size)
    p = _compare(today, batched)
    assert min(p.values()) > 1e-3, {k: v for k, v in p.items() if v <= 1e-3}
    spec = prep.augment_spec()
    lo, hi = spec["scale"]
    assert batched["area"].between(lo - 0.02, hi).all()  # integer crop sides round the area
    assert batched["aspect"].between(spec["ratio"][0] - 0.02, spec["ratio"][1] + 0.02).all()
    for name in ("brightness", "contrast", "saturation", "hue"):
        assert batched[name].between(*spec[name]).all() and batched[name].min() < spec[name][0] + 0.01
    r = batched["radius"][batched["radius"] < NO_FIELD]
    assert r.between(*spec["field_radius"]).all() and abs(len(r) / len(batched) - spec["vignette"]) < 0.01
    assert set(batched["rot"]) == {0, 1, 2, 3} and abs(batched["hflip"].mean() - 0.5) < 0.01


def test_a_narrowed_range_is_caught(monkeypatch):
    """The test above can fail: the batched draws of a subtly different spec are rejected."""
    size = 96
    prep = Preprocess(input_size=16, source_size=size)
    today = _per_sample_draws(prep, 3000, size, monkeypatch)
    for change, key in (({"brightness": 0.36}, "brightness"), ({"scale": (0.78, 1.0)}, "area"), ({"vignette": 0.2}, "field")):
        wrong = Preprocess(input_size=16, source_size=size, **change)
        assert _compare(today, _batched_draws(wrong, 30000, size))[key] < 1e-6, change


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    """120-odd synthetic lesion images at the source stage (64 px), as PIL images and as one uint8 array."""
    from skinlesion.data import load_dataset
    from skinlesion.data.synthetic import write_synthetic

    ds = load_dataset(write_synthetic(tmp_path_factory.mktemp("lesions"), n_lesions=80, layout="flat", size=(80, 60), seed=4))
    prep = Preprocess(input_size=48, source_size=64)
    images = [prep.to_source(ds.image(i)) for i in range(len(ds))]
    return prep, images, np.stack([np.asarray(im) for im in images])


def test_with_the_per_sample_path_s_own_parameters_the_pixels_agree(lesions, monkeypatch):
    """Each image given the parameters today's path drew for it: the batched pixels differ by 1.5 levels on average.
    The difference is Pillow's, a slight darkening: its blends truncate to uint8 after each operation (here 1-2 levels
    over the three blends) and its hue shift is quantised to 1/255 of a turn, truncated towards zero."""
    prep, images, pixels = lesions
    n = 3 * len(images)
    today, records = _run_per_sample(prep, [images[i % len(images)] for i in range(n)], monkeypatch)
    aug = BatchAugment(prep)
    mine = aug.apply(torch.from_numpy(pixels[np.arange(n) % len(images)]), aug.plan(_as_draws(records)))
    levels = (mine - today) * torch.tensor(prep.std).view(1, 3, 1, 1) * 255
    assert float(levels.abs().mean()) < 2.0
    assert float(levels.abs().mean((1, 2, 3)).max()) < 4.0  # no image is treated differently
    bias = levels.mean((0, 2, 3))
    assert (bias > 0).all() and float(bias.max()) < 3.0, bias.tolist()  # Pillow's truncation, no more
    # and the geometry is identical: a flip or a quarter turn the wrong way would move whole lesions
    assert float((levels.abs() > 24).float().mean()) < 0.002


def test_augmented_batches_have_the_per_sample_path_s_means_and_variances(lesions, monkeypatch):
    """Each path with its own draws, 1,500 images each: per-channel means within 0.1 and standard deviations within
    5 % (normalised units; one level is 0.017), and the per-image means from one distribution."""
    from scipy import stats

    prep, images, pixels = lesions
    n = 1500
    today, _ = _run_per_sample(prep, [images[i % len(images)] for i in range(n)], monkeypatch, seed=11)
    batched = BatchAugment(prep, seed=11)(torch.from_numpy(pixels[np.arange(n) % len(images)]), 0, np.arange(n))
    for c in range(3):
        a, b = today[:, c], batched[:, c]
        assert abs(float(a.mean() - b.mean())) < 0.1, (c, float(a.mean()), float(b.mean()))
        assert abs(float(a.std() / b.std()) - 1) < 0.05, (c, float(a.std()), float(b.std()))
        assert stats.ks_2samp(a.mean((1, 2)).numpy(), b.mean((1, 2)).numpy()).pvalue > 1e-3, c


def test_the_same_seed_gives_the_same_batch_and_each_image_its_own_parameters():
    prep = Preprocess(input_size=32, source_size=48)
    pixels = torch.from_numpy(_smooth(16, 48))
    pos = np.arange(200, 216)
    aug = BatchAugment(prep, seed=5)
    a, b = aug(pixels, 3, pos), BatchAugment(prep, seed=5)(pixels, 3, pos)
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(pixels, 4, pos)) and not torch.equal(a, BatchAugment(prep, seed=6)(pixels, 3, pos))
    # different images of one batch draw different parameters: no two share a crop box and colour factors
    d = aug.draw(3, pos, 48, 48)
    keys = set(zip(d.top, d.left, d.height, d.width, d.brightness.round(6), d.hue.round(6)))
    assert len(keys) == len(pos) and len(set(d.brightness)) == len(pos)
    # an image's augmentation depends on (seed, epoch, position) only: not on the batch it came in, nor its place there
    perm = np.random.default_rng(0).permutation(16)[:9]
    part = aug(pixels[perm], 3, pos[perm])
    assert torch.equal(part, a[perm])
    u = uniforms(5, 3, pos, 35)
    assert np.array_equal(u[perm], uniforms(5, 3, pos[perm], 35)) and 0 <= u.min() and u.max() < 1


def test_the_loader_hands_out_uint8_source_pixels_and_a_resident_set_its_row_numbers(tmp_path, monkeypatch):
    """Batches leave the cache unnormalised (uint8, exactly the cache's pixels); kept on the device, the set hands out
    row numbers and the device gathers the same batch (here the CPU stands in for the GPU)."""
    import skinlesion.data.loader as L
    from skinlesion.data import load_dataset
    from skinlesion.data.prepare import prepare
    from skinlesion.data.synthetic import write_synthetic

    cache = tmp_path / "cache"
    prepare(write_synthetic(tmp_path / "data", n_lesions=20, layout="flat", size=(80, 60), seed=2), cache, 40, progress=False)
    ds = load_dataset(cache)
    prep = Preprocess(input_size=32, source_size=40)
    tr = np.arange(3, len(ds))
    streamed = L.PixelSet(ds, tr, prep, seed=1)
    keys = [(2, 5), (2, 0), (2, 7)]
    x, y, pos = streamed.__getitems__(keys)
    assert x.dtype == torch.uint8 and x.shape == (3, 40, 40, 3)
    assert np.array_equal(x.numpy(), ds.arrays[ds.meta["index"].to_numpy()[tr[[5, 0, 7]]]])
    assert pos.tolist() == tr[[5, 0, 7]].tolist() and y.tolist() == ds.labels[tr[[5, 0, 7]]].tolist()
    monkeypatch.setattr(L, "device_budget", lambda: 1 << 40)
    resident = L.PixelSet(ds, tr, prep, seed=1, resident=True)
    rows, y2, pos2 = resident.__getitems__(keys)
    assert rows.tolist() == [5, 0, 7] and torch.equal(pos2, pos)
    a = streamed.augmented(streamed.with_plan((x, y, pos), 2))[0]
    b = resident.augmented(resident.with_plan((rows, y2, pos2), 2))[0]
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert resident.takes((rows, y2, pos2), 3) and not resident.takes((a, y2, pos2), 3)


def test_workers_are_sized_to_the_machine_without_a_cap(monkeypatch):
    import skinlesion.data.loader as L

    monkeypatch.setattr(L.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert L.default_workers(10_000) == 31  # all cores but the training loop's (it was capped at 8)
    assert L.default_workers(100) == 0  # small sets: no workers


def test_where_the_augmentation_runs(tmp_path, synth_kaggle):
    from skinlesion.data import load_dataset
    from skinlesion.data.loader import augment_where
    from skinlesion.errors import SkinLesionError

    raw = load_dataset(synth_kaggle)  # 600x450 JPEGs: one size only with a source stage
    assert augment_where("auto", raw, Preprocess(input_size=224)) == "workers"
    assert augment_where("auto", raw, Preprocess(input_size=224, source_size=256)) == "device"
    assert augment_where("workers", raw, Preprocess(input_size=224, source_size=256)) == "workers"
    with pytest.raises(SkinLesionError, match="needs images of one size.*--source-size"):
        augment_where("device", raw, Preprocess(input_size=224))
    with pytest.raises(SkinLesionError, match="Unknown --augment-on 'gpu'; use auto, device or workers"):
        augment_where("gpu", raw, Preprocess())


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A synthetic task with every class well represented, prepared as a 40 px cache, and its lesion split."""
    from skinlesion.data import load_dataset, make_split
    from skinlesion.data.prepare import prepare
    from skinlesion.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("task")
    data = write_synthetic(root / "data", n_lesions=150, layout="flat", size=(80, 60), seed=8, min_per_class=22)
    prepare(data, root / "cache", 40, progress=False)
    make_split(load_dataset(data).meta, fractions=(0.6, 0.15, 0.25), seed=0).manifest.to_csv(root / "split.csv", index=False)
    return root / "cache", root / "split.csv"


def _weights(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_a_run_killed_after_epoch_one_and_resumed_with_device_augmentation_ends_with_the_uninterrupted_weights(task, tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from skinlesion.train import TrainConfig, train

    cache, split = task
    cfg = dict(data=str(cache), split=str(split), epochs=3, augment_on="device", **TINY)
    ref = train(TrainConfig(out=str(tmp_path / "ref"), **cfg), finish_model=False)
    assert '"augment_on": "device"' in (ref / "config.json").read_text()

    class Killed(BaseException):
        pass

    real = ModelCheckpoint._save_checkpoint

    def save_then_die(self, trainer, filepath):
        real(self, trainer, filepath)
        if trainer.current_epoch == 1:
            raise Killed  # epoch 1 is complete and saved; epoch 2 never starts

    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", save_then_die)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        train(TrainConfig(out=str(run), **cfg), finish_model=False)
    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", real)
    train(TrainConfig(out=str(run), **cfg), resume=True, finish_model=False)
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [0, 1, 2]
    a, b = _weights(ref / "last.safetensors"), _weights(run / "last.safetensors")
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst < 1e-5, f"resumed weights differ from the uninterrupted run's by {worst}"


@pytest.mark.slow
def test_device_augmentation_learns_the_task_as_well_as_the_per_sample_path(task, tmp_path):
    """Held-out (test split) accuracy after the same training with either path: within noise of each other, and
    both far above the majority class."""
    from skinlesion.bundle import load_model
    from skinlesion.data import load_dataset
    from skinlesion.evaluate import dataset_logits
    from skinlesion.train import TrainConfig, train

    cache, split = task
    ds = load_dataset(cache)
    manifest = pd.read_csv(split)
    by_id = {i: k for k, i in enumerate(ds.meta["image_id"])}
    test = np.array([by_id[i] for i in manifest.loc[manifest["split"] == "test", "image_id"]])
    majority = np.bincount(ds.labels[test]).max() / len(test)
    acc = {}
    for where in ("device", "workers"):
        run = train(
            TrainConfig(data=str(cache), split=str(split), out=str(tmp_path / where), epochs=6, augment_on=where, **TINY),
            finish_model=False,
        )
        net, cfg = load_model(run / "best.safetensors")
        logits = dataset_logits(net, cfg.prep, ds, test, num_workers=0)
        acc[where] = float((logits.argmax(1) == ds.labels[test]).mean())
    assert min(acc.values()) > majority + 0.25, (acc, majority)
    assert abs(acc["device"] - acc["workers"]) <= 0.12, acc
