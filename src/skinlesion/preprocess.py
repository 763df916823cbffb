"""The ONE definition of image preprocessing, stored with every model.

Training, evaluation, prediction, export checks and the app all turn an image into
a tensor through :class:`Preprocess`, and a model's :class:`Preprocess` travels in
its JSON config, so the pixels a model is served are the pixels it was trained on.

The pipeline (PIL image of any size -> float tensor C x H x W):

1. ``crop``: ``"center"`` cuts the central square (the shorter side) out of the image
   first, ``"none"`` keeps the whole image. DermaMNIST made its 28x28 images from the
   central 450x450 square of each 600x450 photo (checked on the real full-resolution
   image: 5.6 grey levels mean difference with a centre crop, 15 without), so models
   trained on it record ``crop="center"``.
   ``source_size``: when set, the image is then resized to ``source_size`` square,
   the way the training images were made. A full-resolution upload to a model trained
   on 28x28 images thus goes through the same information bottleneck as its training data
   (``source_interpolation``; bilinear with antialiasing matches DermaMNIST best).
   ``source_jpeg_quality``: when the training images were small JPEG files (as the
   28x28 DermaMNIST copies are, quality 75), a resized upload is JPEG-encoded and decoded
   at that quality too, so it carries the same compression artefacts. Without this, the
   early layers see a "cleaner" image than any they were trained on (the OOD score flags
   such uploads, correctly).
2. resize to ``input_size`` square (the whole image; dermoscopy keeps the lesion
   centred, and nothing is cropped away at inference);
3. to float, then normalise with ``mean`` / ``std``.

Training augmentation (random resized crop, flips, 90-degree rotations, colour jitter, the round
dermatoscope field) is applied between steps 1 and 3. Its strengths live here, in one place
(:meth:`Preprocess.augment_spec`), and two implementations read them: :meth:`train_transform`, per
image on DataLoader workers (PIL + torchvision), and :class:`skinlesion.augment.BatchAugment`, over
the whole batch on the training device. Both draw the same distribution (tests/test_augment.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "box": Image.BOX, "nearest": Image.NEAREST}


STRIP_ROWS = 256  # rows of a large image resized between two checks (checked_resize)


def checked_resize(img: Image.Image, size: tuple[int, int], resample, check) -> Image.Image:
    """``img.resize(size, resample)`` with ``check`` called between strips of rows. Pillow resamples in two
    1-D passes; for a square image made square (the centre-cropped source of a model like the shipped one)
    it runs the width over every row first, then the height, and that first pass's rows do not depend on
    each other, so doing it strip by strip gives the same pixels (tests/test_serve_limits.py checks it bit
    for bit). Other shapes (where Pillow may run the height first) are resized in one call."""
    w, h = img.size
    if h <= STRIP_ROWS or resample == Image.NEAREST or w != h or size[0] != size[1]:
        check()
        return img.resize(size, resample)
    wide = img
    if size[0] != w:
        wide = Image.new(img.mode, (size[0], h))
        for top in range(0, h, STRIP_ROWS):
            check()
            strip = img.crop((0, top, w, min(h, top + STRIP_ROWS))).resize((size[0], min(h, top + STRIP_ROWS) - top), resample)
            wide.paste(strip, (0, top))
    check()
    return wide.resize(size, resample) if wide.size != size else wide


@dataclass
class Preprocess:
    input_size: int = 224
    source_size: int | None = None
    crop: str = "none"  # "center": the central square first (DermaMNIST's convention), "none": whole image
    source_interpolation: str = "bilinear"
    source_jpeg_quality: int | None = None
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # augmentation strength (training only)
    scale: tuple[float, float] = (0.75, 1.0)
    jitter: float = 0.1  # saturation (and a quarter of it, hue)
    # photometric robustness: real dermoscopy varies in exposure and contrast far more than
    # HAM10000 does, and round dermatoscope fields leave black corners (benchmarks/robustness.py)
    brightness: float = 0.4
    contrast: float = 0.4
    vignette: float = 0.25  # probability of a black round-field mask (dermatoscope corners)
    extra: dict = field(default_factory=dict)

    # ---- serialisation ----
    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"], d["scale"] = list(self.mean), list(self.std), list(self.scale)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        d = dict(d)
        for k in ("mean", "std", "scale"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    # ---- the pipeline ----
    def to_source(self, img: Image.Image, check=None) -> Image.Image:
        """Step 1: the resolution the training images had (identity when unset). ``check``: called
        between strips of a large image's resize (it raises to stop; the pixels are the same)."""
        img = img.convert("RGB") if img.mode != "RGB" else img
        if self.crop == "center" and img.size[0] != img.size[1]:
            w, h = img.size
            s = min(w, h)
            img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if self.source_size and img.size != (self.source_size, self.source_size):
            size, resample = (self.source_size, self.source_size), _RESAMPLE[self.source_interpolation]
            img = img.resize(size, resample) if check is None else checked_resize(img, size, resample, check)
            if self.source_jpeg_quality:
                import io

                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=int(self.source_jpeg_quality))
                img = Image.open(buf).convert("RGB")
        return img

    def _resize(self, img: Image.Image) -> Image.Image:
        if img.size != (self.input_size, self.input_size):
            img = img.resize((self.input_size, self.input_size), _RESAMPLE[self.interpolation])
        return img

    def to_pixels(self, img: Image.Image) -> np.ndarray:
        """Steps 1-2 for one image: uint8 array (input_size, input_size, 3), before normalisation."""
        return np.asarray(self._resize(self.to_source(img)), dtype=np.uint8)

    def to_array(self, img: Image.Image) -> np.ndarray:
        """Steps 1-3 for one image: float32 array (3, input_size, input_size)."""
        return self.normalize(self.to_pixels(img))

    def normalize(self, hwc_uint8: np.ndarray) -> np.ndarray:
        x = hwc_uint8.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, images) -> np.ndarray:
        """A batch (N, 3, S, S) float32 from PIL images."""
        return np.stack([self.to_array(im) for im in images])

    def eval_transform(self):
        """A callable PIL image -> torch tensor for evaluation and prediction."""
        import torch

        return lambda img: torch.from_numpy(self.to_array(img))

    def augment_spec(self) -> dict:
        """The training augmentation's ranges, the one definition both implementations read.

        In order: a random resized crop (area fraction ``scale``, aspect ``ratio`` = w / h, torchvision's
        rejection sampling), resized to ``input_size`` at ``interpolation`` with antialiasing; a horizontal
        and a vertical flip, each with probability ``flip``; brightness, contrast, saturation and hue
        (torchvision's ColorJitter: factors uniform in their (low, high) range, ``None`` = off, applied in a
        random order per image); a counter-clockwise rotation by a uniform number of quarter turns
        (``rotations``); with probability ``vignette`` a round field (:func:`round_field`) of radius
        uniform in ``field_radius``; normalisation.
        """

        def around_one(x: float):
            return (max(0.0, 1.0 - x), 1.0 + x) if x else None

        return {
            "scale": tuple(self.scale),
            "ratio": CROP_RATIO,
            "interpolation": self.interpolation,
            "flip": 0.5,
            "brightness": around_one(self.brightness),
            "contrast": around_one(self.contrast),
            "saturation": around_one(self.jitter),
            "hue": (-self.jitter / 4, self.jitter / 4) if self.jitter else None,
            "rotations": 4,
            "vignette": float(self.vignette),
            "field_radius": FIELD_RADIUS_RANGE,
        }

    def train_transform(self):
        """A callable PIL image -> augmented torch tensor: the per-image implementation of :meth:`augment_spec`
        (PIL and torchvision on a DataLoader worker; ``skinlesion.augment`` is the batched one)."""
        import torch
        from torchvision.transforms import v2 as T

        spec = self.augment_spec()
        aug = T.Compose(
            [
                T.RandomResizedCrop(
                    self.input_size,
                    scale=spec["scale"],
                    ratio=spec["ratio"],
                    interpolation=T.InterpolationMode(self.interpolation),
                    antialias=True,
                ),
                T.RandomHorizontalFlip(spec["flip"]),
                T.RandomVerticalFlip(spec["flip"]),
                T.ColorJitter(brightness=spec["brightness"], contrast=spec["contrast"], saturation=spec["saturation"], hue=spec["hue"]),
            ]
        )

        def transform(img: Image.Image):
            img = aug(self.to_source(img))
            k = int(torch.randint(spec["rotations"], ()).item())
            if k:
                img = img.rotate(90 * k)  # the 90-degree rotations: dermoscopy has no "up"
            arr = np.asarray(img, dtype=np.uint8)
            if spec["vignette"] and float(torch.rand(())) < spec["vignette"]:
                lo, hi = spec["field_radius"]
                arr = round_field(arr, radius=lo + (hi - lo) * float(torch.rand(())))
            return torch.from_numpy(self.normalize(arr))

        return transform


# the training augmentation's strengths that `skinlesion train --augment NAME=VALUE` may set: (low, high, meaning)
AUGMENT = {
    "brightness": (0.0, 0.9, "ColorJitter brightness: factors 1 -/+ this"),
    "contrast": (0.0, 0.9, "ColorJitter contrast: factors 1 -/+ this"),
    "jitter": (0.0, 0.5, "ColorJitter saturation (hue: a quarter of it)"),
    "vignette": (0.0, 1.0, "probability of a round dermatoscope field"),
}


def with_augment(prep: Preprocess, overrides: dict) -> Preprocess:
    """``prep`` with the augmentation strengths in ``overrides`` (names of :data:`AUGMENT`), each checked."""
    from dataclasses import replace

    from .errors import SkinLesionError

    for name, value in overrides.items():
        if name not in AUGMENT:
            raise SkinLesionError(f"Unknown --augment {name!r}; use {', '.join(AUGMENT)} (NAME=VALUE).")
        lo, hi, _ = AUGMENT[name]
        if not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
            raise SkinLesionError(f"--augment {name}={value} is out of range; use a number from {lo} to {hi}.")
    return replace(prep, **{k: float(v) for k, v in overrides.items()})


FIELD_RADIUS_RANGE = (0.55, 0.90)  # the round fields training draws (Preprocess.vignette); the OOD fit accepts them
CROP_RATIO = (0.8, 1.25)  # the random resized crop's aspect ratios (width / height)


def round_field(hwc_uint8: np.ndarray, radius: float = 0.7) -> np.ndarray:
    """Black out what lies outside a centred circle: a round dermatoscope field.

    ``radius`` is relative to half the image's diagonal: 1.0 masks nothing, 0.71 touches the
    edges' midpoints and leaves the four corners black, smaller values cut into the field.
    """
    h, w = hwc_uint8.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy + 0.5 - h / 2) / (h / 2), (xx + 0.5 - w / 2) / (w / 2)) / np.sqrt(2)
    out = hwc_uint8.copy()
    out[r > radius] = 0
    return out


def tta_logits(views_logits):
    """Combine per-view logits (V, N, C) into one set of logits: the log of the mean probability.

    Temperature scaling then applies to these, in evaluation and prediction alike.
    """
    import numpy as np

    z = np.asarray(views_logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return np.log(np.clip(p.mean(axis=0), 1e-12, None))


def tta_views(x):
    """The 8 flips/rotations (dihedral group) of a batch (N, C, H, W): a torch tensor or a numpy array.

    The one definition of the test-time-augmentation views, used by evaluation (torch) and the
    predictor (numpy, also for ONNX Runtime); combine their logits with :func:`tta_logits`.
    """
    if isinstance(x, np.ndarray):
        rot, flip = (lambda a, k: np.rot90(a, k, axes=(2, 3))), (lambda a: a[..., ::-1])
    else:
        import torch

        rot, flip = (lambda a, k: torch.rot90(a, k, dims=(2, 3))), (lambda a: torch.flip(a, dims=(3,)))
    views = []
    for k in range(4):
        r = rot(x, k)
        views += [r, flip(r)]
    return views
