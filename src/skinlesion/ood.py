"""Out-of-distribution score: is this upload a dermoscopic image like the training data?

Mahalanobis distance (Lee et al., 2018, "feature ensemble") of the backbone's
globally pooled feature maps, stage by stage (timm's ``feature_info`` stages: early
ones see colour and texture, late ones shapes), each to a Gaussian fitted on the
training images (Ledoit-Wolf shrinkage). Each stage's distance is divided by its own
val percentile; the score is the mean of those ratios (Lee et al. combine the stages by a
weighted sum; equal weights need no outlier data to fit), and its threshold is a high
percentile of the val images' scores, so about ``100 - percentile`` % of real val
images are flagged while selfies, cats and phone photos land far outside.

The mean, not the largest ratio (which models fitted before 2026-12, without an ``aggregate`` key, keep):
a cat or an RGB noise image is moderately far at several stages, while a real image far at one
stage is near at the others. Fitted on each member of two 5-member ensembles (its held-out fold for
the thresholds), the mean flagged 94 of 100 everyday photos and noise images against 91 for the
largest, and fewer held-out images (0.8-0.9 % against 1.1-1.2 %); on the first member, whose fit a
bundle ships, 10 of 10 in both ensembles against 9 of 10 (benchmarks/ood_aggregate.py; RESULTS.md,
"The OOD score: the mean of the stages' ratios"). Noise remains the closest call.

A round dermatoscope field (black corners) is how much real dermoscopy looks, and the
model is trained to handle it (``Preprocess.vignette``); so are exposure and contrast changes
(``Preprocess.brightness``/``contrast``). The score answers "is this a dermoscopic image at all",
not "is this a good photo" (that is :mod:`skinlesion.quality`). So where the model was trained
with them, the Gaussians and thresholds are fitted on each image both as it is and under one
variant: a round field (radii spread over the training range, :data:`FIELD_RADII`) or an exposure
or contrast change of the robustness benchmark up to its middle severity (:data:`PHOTOMETRIC`).
Black corners, a darker or a washed-out photo alone are not flagged; what the model never saw
(a cat, a face, a document) still is.

Skin has colour: an image with (almost) none, a greyscale photo, a document or an X-ray, is not
dermoscopy whatever its features say. So the score also has a colour floor (``min_chroma``): a
quarter of the mean chroma of the least colourful training image; below it an image is flagged.

The fitted means and precisions travel inside the model's safetensors file (keys
``ood.*``); the JSON config holds the stages, their sizes, the thresholds, how the stages
combine (``aggregate``) and the colour floor.
"""

from __future__ import annotations

import numpy as np

PERCENTILE = 97.5
PREFIX = "ood."
MAX_CHANNELS = 1024  # wider stages are skipped (their precision matrix would bloat the model file)


def _stage_info(net) -> tuple[str, list[dict]]:
    """(name prefix, timm feature_info) of the network whose stages are scored: an ensemble's first member."""
    members = getattr(net, "members", None)
    if members is not None:
        prefix, info = _stage_info(members[0])
        return "members.0." + prefix, info
    return "", list(getattr(net, "feature_info", None) or [])


def stages(net) -> list[str]:
    """Module names of the backbone stages used for the score (an ensemble's first member)."""
    prefix, info = _stage_info(net)
    return [prefix + f["module"] for f in info if f["num_chs"] <= MAX_CHANNELS]


def stage_dims(net) -> list[int]:
    _, info = _stage_info(net)
    return [f["num_chs"] for f in info if f["num_chs"] <= MAX_CHANNELS]


def _field_radii() -> tuple[float, ...]:
    from .preprocess import FIELD_RADIUS_RANGE

    return tuple(float(r) for r in np.linspace(*FIELD_RADIUS_RANGE, 5))  # spread over the range training draws from


FIELD_RADII = _field_radii()
# (corruption, severity) of skinlesion.corruptions the score accepts: the exposure and contrast changes up to severity 3
PHOTOMETRIC = tuple((c, s) for c in ("brighter", "darker", "lower_contrast", "higher_contrast") for s in (1, 2, 3))


def dataset_features(net, prep, ds, positions, names, batch_size: int = 256, transform=None) -> np.ndarray:
    """Pooled stage features of rows ``positions`` (through the one inference loop, skinlesion.evaluate)."""
    from .evaluate import dataset_outputs

    return dataset_outputs(net, prep, ds, positions, stages=names, batch_size=batch_size, num_workers=0, transform=transform)[1]


def field_transform(prep, radius: float):
    """PIL image -> model input tensor, with a round dermatoscope field of ``radius`` (as in training)."""
    import torch

    from .preprocess import round_field

    return lambda img: torch.from_numpy(prep.normalize(round_field(prep.to_pixels(img), radius)))


def photometric_transform(prep, corruption: str, severity: int):
    """PIL image -> model input tensor, with an exposure or contrast change applied at the source resolution."""
    import torch

    from .corruptions import CORRUPTIONS

    change = CORRUPTIONS[corruption](severity)
    rng = np.random.default_rng(0)
    return lambda img: torch.from_numpy(prep.to_array(change(prep.to_source(img), rng)))


def features_with_fields(net, prep, ds, positions, names, radii=FIELD_RADII, photometric=(), plain=None) -> np.ndarray:
    """The features of ``positions`` as they are, then of the same images under one variant each.

    The variants are the round fields of ``radii`` and the (corruption, severity) changes of
    ``photometric``; the images are dealt to them in turn, so every image appears twice: once
    plain, once changed (no variants: plain only). ``plain``: the plain features, already computed.
    """
    positions = np.asarray(positions)
    variants = [field_transform(prep, r) for r in radii] + [photometric_transform(prep, c, s) for c, s in photometric]
    feats = [dataset_features(net, prep, ds, positions, names) if plain is None else np.asarray(plain)]
    for k, tf in enumerate(variants):
        part = positions[k :: len(variants)]
        if len(part):
            feats.append(dataset_features(net, prep, ds, part, names, transform=tf))
    return np.concatenate(feats)


CHROMA_SIDE = 512  # an upload's colour is measured on at most this many pixels a side (nearest: no pixel is averaged)


def chroma(img) -> float:
    """Mean colourfulness of an image: the spread between its channels, 0 (grey) to 1."""
    a = np.asarray(img.convert("RGB"), np.int16)
    return float((a.max(-1) - a.min(-1)).mean() / 255.0)


def upload_chroma(img) -> float:
    """The chroma of an upload at its own resolution (taken by nearest neighbour beyond :data:`CHROMA_SIDE`).

    Not of its downscaled source: averaging pixels greys out colour noise (random RGB noise at 28 px
    has a chroma near 0), which would call a full-colour image colourless.
    """
    w, h = img.size
    if max(w, h) > CHROMA_SIDE:
        s = CHROMA_SIDE / max(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), 0)  # 0: Image.NEAREST
    return chroma(img)


def colourless(images, config: dict) -> np.ndarray:
    """Which uploads fall below the colour floor (a model fitted without one flags none). ``images``: PIL
    images, or :class:`skinlesion.predict.Reduced` ones (their chroma taken when they were decoded)."""
    floor = (config or {}).get("min_chroma")
    if not floor:
        return np.zeros(len(images), bool)
    return np.array([(im.chroma if getattr(im, "chroma", None) is not None else upload_chroma(im)) < floor for im in images], bool)


def _mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    z = np.asarray(x, np.float64) - mean
    return np.einsum("ij,jk,ik->i", z, precision, z)


AGGREGATES = {"mean": np.mean, "max": np.max}  # how the stages' ratios make one score


def score(feats: np.ndarray, tensors: dict, config: dict) -> np.ndarray:
    """The OOD score of each row of concatenated stage features (higher: further outside)."""
    combine = AGGREGATES[config.get("aggregate", "max")]  # a model fitted without the key took the largest
    ratios = []
    start = 0
    for k, (dim, th) in enumerate(zip(config["dims"], config["stage_thresholds"])):
        part = feats[:, start : start + dim]
        start += dim
        d = _mahalanobis(part, tensors[f"{PREFIX}mean.{k}"].astype(np.float64), tensors[f"{PREFIX}precision.{k}"].astype(np.float64))
        ratios.append(d / th)
    return combine(np.stack(ratios, 1), axis=1)


def fit(
    train_feats: np.ndarray,
    val_feats: np.ndarray,
    names: list[str],
    dims: list[int],
    percentile: float = PERCENTILE,
    aggregate: str = "mean",
) -> tuple[dict, dict]:
    """Fit one Gaussian per stage; return (tensors for safetensors, JSON config)."""
    from sklearn.covariance import LedoitWolf

    tensors, stage_th = {}, []
    start = 0
    for k, dim in enumerate(dims):
        tr, va = train_feats[:, start : start + dim], val_feats[:, start : start + dim]
        start += dim
        mean = tr.mean(0)
        precision = LedoitWolf().fit(tr - mean).precision_
        tensors[f"{PREFIX}mean.{k}"] = mean.astype(np.float32)
        tensors[f"{PREFIX}precision.{k}"] = precision.astype(np.float32)
        stage_th.append(float(np.percentile(_mahalanobis(va, mean, precision), percentile)))
    config = {"method": "mahalanobis-stages", "stages": names, "dims": dims, "stage_thresholds": stage_th, "percentile": percentile}
    config["aggregate"] = aggregate
    val_scores = score(val_feats, tensors, config)
    config["threshold"] = float(np.percentile(val_scores, percentile))
    config["val_flagged"] = float(np.mean(val_scores > config["threshold"]))
    return tensors, config


def fit_min_chroma(prep, ds, positions) -> float:
    """The colour floor: a quarter of the least colourful training image's mean chroma (at the source resolution)."""
    return 0.25 * min(chroma(prep.to_source(ds.image(int(i)))) for i in positions)


MAX_TRAIN = 2000  # training images the Gaussians are fitted on (each also once under a variant): 4,000 rows for at most 320 dims


def sample_train(train_positions, max_train: int = MAX_TRAIN, seed: int = 0) -> np.ndarray:
    """The training rows the image checks are fitted on: all of them, or a seeded random ``max_train``."""
    tr = np.asarray(train_positions)
    if len(tr) > max_train:
        tr = np.random.default_rng(seed).choice(tr, max_train, replace=False)
    return tr


def fit_for_model(net, prep, ds, train_positions, val_positions, max_train: int = MAX_TRAIN, seed: int = 0, plain=None):
    """Fit the score of ``net`` on (a sample of) its training rows, thresholds on its held-out rows.

    ``plain`` = (the sampled training rows, their features, the val rows' features), already computed
    by the caller (:func:`skinlesion.finish.fit_image_checks` shares them with the photo-quality fit):
    then only the variants are forwarded here. The colour floor looks at every training row.
    """
    names = stages(net)
    if not names:
        return {}, None
    tr = np.asarray(plain[0]) if plain is not None else sample_train(train_positions, max_train, seed)
    va = np.asarray(val_positions)
    dims = stage_dims(net)
    radii = FIELD_RADII if getattr(prep, "vignette", 0) else ()
    photometric = PHOTOMETRIC if getattr(prep, "brightness", 0) or getattr(prep, "contrast", 0) else ()
    tf = features_with_fields(net, prep, ds, tr, names, radii, photometric, plain=None if plain is None else plain[1])
    vf = features_with_fields(net, prep, ds, va, names, radii, photometric, plain=None if plain is None else plain[2])
    tensors, config = fit(tf, vf, names, dims)
    config["round_field_radii"] = list(radii)  # the fields fitted as in distribution (empty: none)
    config["min_chroma"] = fit_min_chroma(prep, ds, train_positions)
    config["photometric"] = [f"{c} {s}" for c, s in photometric]  # the exposure/contrast changes fitted as in distribution
    config["n_train"] = int(len(tr))
    return tensors, config
