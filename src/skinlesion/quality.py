"""Photo quality: what is wrong with a dermoscopic photo, and how to retake it.

A separate question from "is this dermoscopy at all" (:mod:`skinlesion.ood`): a real lesion
photographed too bright, too dark, washed out, blurred, cut by the frame, off centre or from too
far away. Each problem of :data:`PROBLEMS` is named with one sentence of advice; the analysis is
still shown.

How it works. The check looks at the image the model sees (``Preprocess.to_source``: 28 px for
DermaMNIST models; at most :data:`WORK_SIDE` px otherwise). Per image it computes exposure,
contrast, sharpness and colour statistics, the lesion's geometry (a dark-region mask: its area,
its centre's distance from the middle, how much of the frame's edge it covers), and, where the
model has them, the network's pooled stage features (the ones the OOD score uses, so they cost
nothing at prediction time). One logistic regression per problem, trained on the model's own
training images against the same images under that problem (:mod:`skinlesion.corruptions`,
severities 2-4, each image at one of them), scores each image; the threshold is the clean held-out images'
``1 - false_alarm`` quantile, so about :data:`FALSE_ALARM` of good photos get each warning. A
photo smaller than the model's source size is "too small" whatever its scores.

The fitted scalers and coefficients travel in the bundle's safetensors (``quality.*``), the
thresholds and the measured rates in its JSON (``quality``).
"""

from __future__ import annotations

import numpy as np

from .imagework import WORK_SIDE, working_image  # noqa: F401 (the check's working image, re-exported)
from .imagework import otsu as _otsu
from .imagework import outside_field

PREFIX = "quality."
FALSE_ALARM = 0.007  # per problem, on clean held-out images (seven problems: at most ~5 % of good photos get any)
FIT_SEVERITIES = (2, 3, 4)
MAX_TRAIN = 600  # training images the check is fitted on: 600 clean against 600 per problem (a third at each severity)
MIN_HELD_OUT = 200  # fewer held-out images cannot set a threshold for a 0.7 % false-alarm rate: no check is fitted

# problem -> (what is wrong, how to retake), and the corruption that makes it
PROBLEMS = {
    "overexposed": ("The photo is overexposed (too bright)", "retake it with less light or a lower exposure", "brighter"),
    "underexposed": ("The photo is underexposed (too dark)", "retake it with more light (is the dermatoscope's light on?)", "darker"),
    "low_contrast": (
        "The photo has low contrast (washed out)",
        "retake it with the lens flat on the skin, without glare or haze (a polarised dermatoscope helps)",
        "lower_contrast",
    ),
    "blurred": ("The photo is blurred or out of focus", "hold the camera still, focus on the lesion and retake it", "blur"),
    "cut_by_frame": (
        "The lesion is cut by the edge of the photo",
        "retake it with the whole lesion and a rim of skin around it inside the frame",
        "cut_by_frame",
    ),
    "off_centre": ("The lesion is far from the centre of the photo", "retake it with the lesion in the middle", "off_centre"),
    "too_small": (
        "The lesion is too small in the photo to analyse",
        "move closer or zoom in so the lesion fills most of the frame",
        "too_small",
    ),
}


def advice(problem: str) -> str:
    """The one sentence shown for ``problem``: what is wrong and how to retake the photo."""
    what, how, _ = PROBLEMS[problem]
    return f"Photo quality: {what}; {how}. The analysis below may be less reliable."


def image_features(img) -> np.ndarray:
    """Exposure, contrast, sharpness, colour and lesion-geometry statistics of one working image (float64)."""
    from scipy import ndimage

    a = np.asarray(img.convert("RGB"), np.float64)
    h, w = a.shape[:2]
    lum = a @ np.array([0.299, 0.587, 0.114])
    keep = outside_field(lum)  # a black round dermatoscope field is not "underexposed"
    v = lum[keep]
    mx, mn = a.max(-1)[keep], a.min(-1)[keep]
    sat = (mx - mn) / (mx + 1)
    lap = np.abs(ndimage.laplace(lum))[keep]
    grad = np.hypot(ndimage.sobel(lum, 0), ndimage.sobel(lum, 1))[keep]
    hp = np.abs(lum - ndimage.gaussian_filter(lum, 1.0))[keep]
    pct = np.percentile(v, [2, 10, 25, 50, 75, 90, 98])
    # the lesion: the largest dark region (Otsu) inside the field
    lesion = (lum < _otsu(v)) & keep
    comp, n = ndimage.label(lesion)
    if n:
        sizes = ndimage.sum(lesion, comp, range(1, n + 1))
        lesion = comp == 1 + int(np.argmax(sizes))
    area = lesion.sum() / max(1, keep.sum())
    if lesion.any():
        yy, xx = np.nonzero(lesion)
        offset = np.hypot((yy.mean() + 0.5 - h / 2) / (h / 2), (xx.mean() + 0.5 - w / 2) / (w / 2)) / np.sqrt(2)
    else:
        offset = 0.0
    border = np.zeros((h, w), bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    border &= keep
    contact = (lesion & border).sum() / max(1, border.sum())
    contrast_lesion = (v[~lesion[keep]].mean() - v[lesion[keep]].mean()) if lesion.any() and (~lesion[keep]).any() else 0.0
    return np.array(
        [
            *pct,
            v.std(),
            (v >= 250).mean(),
            (mx >= 252).mean(),
            (v <= 8).mean(),
            sat.mean(),
            np.percentile(sat, 90),
            lap.mean(),
            grad.mean(),
            hp.mean(),
            lap.mean() / (v.std() + 1),
            hp.mean() / (grad.mean() + 1e-3),
            np.log1p(lap.mean()),
            keep.mean(),
            area,
            offset,
            contact,
            contrast_lesion,
            np.sqrt(area),
        ]
    )


def features(images, net_features: np.ndarray | None = None) -> np.ndarray:
    """The check's input for working images (and the network's pooled features, when the model has them)."""
    stats = np.stack([image_features(im) for im in images])
    if net_features is None or net_features.shape[1] == 0:
        return stats
    return np.hstack([stats, np.asarray(net_features, np.float64)])


def scores(x: np.ndarray, tensors: dict, config: dict) -> np.ndarray:
    """(N, problems) logistic scores; higher: more likely that problem."""
    z = (x - tensors[f"{PREFIX}mean"]) / tensors[f"{PREFIX}scale"]
    return z @ np.asarray(tensors[f"{PREFIX}coef"], np.float64).T + np.asarray(tensors[f"{PREFIX}intercept"], np.float64)


def check(x: np.ndarray, sizes, tensors: dict, config: dict) -> list[list[str]]:
    """The problems named for each image: features ``x`` (:func:`features`) and original ``sizes`` (w, h)."""
    s = scores(x, tensors, config)
    names = list(config["problems"])
    th = np.array([config["problems"][p]["threshold"] for p in names])
    min_side = config.get("min_side") or 0
    out = []
    for i in range(len(x)):
        named = [p for p, hit in zip(names, s[i] > th) if hit]
        if min(sizes[i]) < min_side and "too_small" not in named:
            named.append("too_small")
        out.append(named)
    return out


def _memory_dataset(images):
    """Working images as an in-memory dataset, for the one inference loop (skinlesion.evaluate)."""
    import pandas as pd

    from .data.ham10000 import Dataset

    arrays = np.stack([np.asarray(im.convert("RGB"), np.uint8) for im in images])
    n = len(images)
    meta = pd.DataFrame({"image_id": [str(i) for i in range(n)], "label": np.zeros(n, int), "index": np.arange(n)})
    return Dataset(root=None, layout="memory", meta=meta, arrays=arrays)


def net_features(net, prep, images, stages) -> np.ndarray | None:
    """The pooled stage features of working images (what the predictor computes for the OOD score)."""
    if not stages:
        return None
    from .evaluate import dataset_outputs

    sizes = {im.size for im in images}
    if len(sizes) != 1:  # full-resolution datasets of mixed sizes: one image at a time
        return np.concatenate([net_features(net, prep, [im], stages) for im in images])
    return dataset_outputs(net, prep, _memory_dataset(images), stages=stages, num_workers=0)[1]


def fit(
    net, prep, ds, train_positions, val_positions, stages, *, max_train: int = MAX_TRAIN, seed: int = 0, clean_features=None
) -> tuple[dict, dict | None]:
    """Fit the check on a model's training images; thresholds on its held-out ones. (tensors, config).

    Each problem's examples are the training images under that problem, the images dealt in turn to
    the severities of :data:`FIT_SEVERITIES` (each image once per problem). ``clean_features`` =
    (features of ``train_positions``, of ``val_positions``): the network's pooled stage features of the
    clean images, already computed by the caller (the OOD fit's); then ``train_positions`` must be
    at most ``max_train`` rows, taken as given.

    With fewer than :data:`MIN_HELD_OUT` held-out images no check is fitted (``({}, None)``): its
    thresholds could not be trusted, and a check that cries wolf is worse than none."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from .corruptions import corrupt

    if len(val_positions) < MIN_HELD_OUT:
        return {}, None
    rng = np.random.default_rng(seed)
    tr = np.asarray(train_positions)
    if len(tr) > max_train:
        tr = rng.choice(tr, max_train, replace=False)
    va = np.asarray(val_positions)
    half = rng.permutation(len(va))
    va_a, va_b = va[half[: len(va) // 2]], va[half[len(va) // 2 :]]  # thresholds on a, the rate stated on b

    if clean_features is not None and len(tr) != len(clean_features[0]):
        raise ValueError("clean_features must be those of train_positions (at most max_train rows)")

    def feats(positions, problem=None, severity=None, net_feats=None):
        ims = [working_image(prep, ds.image(int(i))) for i in positions]
        if problem is not None:
            ims = corrupt(ims, PROBLEMS[problem][2], severity, seed=seed)
        return features(ims, net_features(net, prep, ims, stages) if net_feats is None else net_feats)

    clean_tr = feats(tr, net_feats=None if clean_features is None else clean_features[0])
    k = len(FIT_SEVERITIES)
    bad = {p: np.vstack([feats(tr[j::k], p, s) for j, s in enumerate(FIT_SEVERITIES) if len(tr[j::k])]) for p in PROBLEMS}
    scaler = StandardScaler().fit(np.vstack([clean_tr, *bad.values()]))
    coef, intercept = [], []
    for p in PROBLEMS:
        x = scaler.transform(np.vstack([clean_tr, bad[p]]))
        y = np.r_[np.zeros(len(clean_tr)), np.ones(len(bad[p]))]
        lr = LogisticRegression(C=0.05, max_iter=5000, class_weight="balanced").fit(x, y)
        coef.append(lr.coef_[0])
        intercept.append(lr.intercept_[0])
    tensors = {
        f"{PREFIX}mean": scaler.mean_.astype(np.float32),
        f"{PREFIX}scale": np.where(scaler.scale_ > 0, scaler.scale_, 1.0).astype(np.float32),
        f"{PREFIX}coef": np.asarray(coef, np.float32),
        f"{PREFIX}intercept": np.asarray(intercept, np.float32),
    }
    config = {"method": "logistic per problem on image statistics + pooled stage features", "problems": {}}
    va_feats = None if clean_features is None else np.asarray(clean_features[1])
    sa = scores(feats(va_a, net_feats=None if va_feats is None else va_feats[half[: len(va) // 2]]), tensors, config)
    sb = scores(feats(va_b, net_feats=None if va_feats is None else va_feats[half[len(va) // 2 :]]), tensors, config)
    for k, p in enumerate(PROBLEMS):
        th = float(np.quantile(sa[:, k], 1 - FALSE_ALARM))
        config["problems"][p] = {"threshold": th, "false_alarm_held_out": float(np.mean(sb[:, k] > th)), "corruption": PROBLEMS[p][2]}
    config.update(
        {
            "target_false_alarm": FALSE_ALARM,
            "any_false_alarm_held_out": float(np.mean((sb > np.array([config["problems"][p]["threshold"] for p in PROBLEMS])).any(1))),
            "min_side": int(prep.source_size or 64),
            "work_side": WORK_SIDE,
            "stages": list(stages),
            "n_train": int(len(tr)),
            "n_held_out": int(len(va)),
            "fit_severities": list(FIT_SEVERITIES),
        }
    )
    return tensors, config
