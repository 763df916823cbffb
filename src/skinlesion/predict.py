"""The predictor behind ``skinlesion predict``, the Python API and the app.

Loads a model bundle once (run directory, model file or ``default``; a single network or an
ensemble), applies its stored preprocessing, and returns per image: calibrated probabilities
for the model's classes (after the bundle's calibration and, when it uses them, the patient's
age, sex and body site), the class its decision rule names, the malignant/pre-malignant
probability, the out-of-distribution score, the analysis rules of :mod:`skinlesion.posthoc`
(refer when unsure, the conformal prediction set, the triage tier), the photo-quality problems
(:mod:`skinlesion.quality` on the image the model sees, :mod:`skinlesion.photo_quality` on the photo
as uploaded; each problem once) and the words of :func:`skinlesion.verdict.verdict`. Runs on PyTorch or, when a current ONNX export of the
bundle exists, on ONNX Runtime; the decision rule and every rule after the network are
applied here, in one place, whichever runs the network. Safe to share between threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .classes import CODES, get
from .errors import SkinLesionError, walk_files
from .intake import open_image

OOD_WARNING = "out of distribution: score {score:.2f} > threshold {threshold:.2f}"
COLOURLESS_WARNING = "out of distribution: the image has almost no colour (a greyscale photo?), and skin has colour"
OOD_EXPLAINED = (
    "This image does not look like the dermoscopic images the model was trained on "
    "(out-of-distribution score {score:.2f} > threshold {threshold:.2f})."
)
CHECKED_ROWS = 8  # network rows (image views) run between two cancellation checks (a served analysis)
ROW_FIRST = ["image", "top_class", "probability", "decision_rule", "malignant_probability"]
ROW_LAST = [
    "prediction_set",
    "tier",
    "verdict",
    "summary",
    "refer",
    "refer_reason",
    "quality",
    "quality_advice",
    "photo_quality",
    "ood_score",
    "ita",
    "skin_tone",
    "warnings",
    "error",
]


def row_columns(codes=CODES) -> list[str]:
    """The columns of ``predict``'s CSV for a model with classes ``codes`` (one probability column each)."""
    return [*ROW_FIRST, *codes, *ROW_LAST]


ROW_COLUMNS = row_columns()  # a HAM10000 model's


@dataclass
class Prediction:
    name: str
    probabilities: dict[str, float]
    top: str
    top_probability: float
    malignant_probability: float
    ood_score: float | None = None
    out_of_distribution: bool = False
    warnings: list[str] = field(default_factory=list)
    refer: bool = False
    refer_reason: str = ""
    prediction_set: list[str] = field(default_factory=list)
    tier: str | None = None
    rule: str = "most-probable"  # the decision rule that named ``top``
    quality: list[str] = field(default_factory=list)  # photo-quality problems (skinlesion.quality codes), both checks, once each
    quality_advice: list[str] = field(default_factory=list)  # one sentence each: what is wrong, how to retake
    photo_quality: object = None  # skinlesion.photo_quality.PhotoQuality: the check on the photo as uploaded
    ood_reasons: list[str] = field(default_factory=list)  # the OOD checks that fired: "colour", "distance"
    ita: float | None = None  # skin tone: ITA (degrees) of the skin around the lesion (skinlesion.skintone)
    skin_tone: str = ""  # its ITA band
    skin_tone_outside: bool = False  # darker than the training images' range (stored in the bundle)
    verdict: object = None  # skinlesion.verdict.Verdict: the words every view shows

    @property
    def diagnosis(self):
        return get(self.top)

    def ranked(self) -> list[tuple[str, float]]:
        """(code, probability) from the most to the least likely."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])

    def row(self) -> dict:
        from .verdict import photo_quality_line

        return {
            "image": self.name,
            "top_class": self.top,
            "probability": round(self.top_probability, 6),
            "decision_rule": self.rule,
            "malignant_probability": round(self.malignant_probability, 6),
            **{c: round(p, 6) for c, p in self.probabilities.items()},
            "prediction_set": "|".join(self.prediction_set),
            "tier": (self.verdict.tier if self.verdict else self.tier) or "",  # none where the image is not analysed
            "verdict": self.verdict.line if self.verdict else "",
            "summary": self.verdict.summary if self.verdict else "",
            "refer": self.refer,
            "refer_reason": self.refer_reason,
            "quality": "|".join(self.quality),
            "quality_advice": " ".join(self.quality_advice),
            "photo_quality": photo_quality_line(self.photo_quality),
            "ood_score": None if self.ood_score is None else round(self.ood_score, 2),
            "ita": None if self.ita is None else round(self.ita, 1),
            "skin_tone": self.skin_tone,
            "warnings": " | ".join(self.warnings),
            "error": "",
        }


@dataclass
class Reduced:
    """An image as far as the analysis needs it once decoded: the model's source image (for the shipped
    model 28x28), the upload's own size, its chroma and the photo-quality check of the photo as uploaded
    (:mod:`skinlesion.photo_quality`), both at its own resolution. Made right after decoding
    (:meth:`Predictor.reduce`), so that a large upload's pixels are freed before the next file is read;
    every number the analysis gives is the same as from the decoded image (:meth:`Preprocess.to_source`
    is idempotent)."""

    source: object  # PIL image
    size: tuple[int, int]
    chroma: float | None = None
    photo: object = None  # skinlesion.photo_quality.PhotoQuality


class Predictor:
    """Load once, predict many; safe to share between threads (the app's sessions).

    ``backend``: auto (ONNX Runtime when a current export of this bundle exists), torch or onnx.
    ``rule``: the decision rule that names the top class (default: the model's own, see
    :mod:`skinlesion.posthoc`); the probabilities, tier and sets do not depend on it.
    ``threads``: intra-op threads per call; default: the usable cores divided by ``concurrency``, the
    number of calls served at once (:mod:`skinlesion.runtime`; ONNX Runtime never spin-waits).
    """

    def __init__(
        self,
        model: str | Path = "default",
        *,
        backend: str = "auto",
        tta: bool | None = None,
        threads: int | None = None,
        rule: str | None = None,
        concurrency: int = 1,
    ):
        from .bundle import load_config, onnx_for, resolve_model_path

        if backend not in ("auto", "torch", "onnx"):
            raise SkinLesionError(f"Unknown backend {backend!r}; use auto, torch or onnx.")
        path = resolve_model_path(model)
        given_onnx = str(model).lower().endswith(".onnx")
        onnx_path = Path(model).expanduser() if given_onnx else onnx_for(model)  # onnx_for returns only a current export
        if backend == "auto":
            backend = "onnx" if onnx_path is not None else "torch"
        self.config = load_config(path, check_backbones=backend == "torch")
        self.prep = self.config.prep
        self.labels = self.config.labels
        self.rule = rule or self.config.rule
        from .posthoc import rule_log_weights

        rule_log_weights(self.config.decision, self.rule, len(self.labels))  # an unknown rule is refused here, in one sentence
        self.tta = self.config.tta if tta is None else tta  # None: the model's own choice, made on held-out data
        self.backend = backend
        self.model_path = path
        from .bundle import bundle_hash

        self.model_hash = bundle_hash(path)[:12]  # which exact model answered: in the app's CSV and reports
        from .runtime import threads_for

        self.threads = int(threads) if threads else threads_for(concurrency)
        self._lock = threading.Lock()  # PyTorch forward hooks (OOD features, Grad-CAM) are per module, not per call
        self.net = None
        self.session = None
        if backend == "onnx":
            from .bundle import onnx_is_current

            if onnx_path is None or (given_onnx and not onnx_is_current(onnx_path, path)):
                raise SkinLesionError(
                    f"No current ONNX export of {path.name}; run `skinlesion export {model}` first "
                    "(an export made from other weights is never used)."
                )
            import onnxruntime as ort

            from .runtime import ort_session_options

            self.session = ort.InferenceSession(str(onnx_path), ort_session_options(self.threads), providers=["CPUExecutionProvider"])
            self.aux = read_aux(path)
        else:
            import torch

            from .bundle import load_model

            torch.set_num_threads(self.threads)
            self.net, _, self.aux = load_model(path, with_extra=True)
        self.ood = (self.aux, self.config.ood) if self.config.ood and "ood.mean.0" in self.aux else None
        self.ood_stages = self.config.ood["stages"] if self.ood else []
        q = self.config.quality
        self.quality = (self.aux, q) if q and "quality.coef" in self.aux else None
        if self.quality and q.get("uses_network_features") and list(q.get("stages", [])) != list(self.ood_stages):
            raise SkinLesionError(
                f"The quality check of {path.name} reads other network features than its OOD score; refit it (skinlesion.cv.refit)."
            )

    @property
    def uses_metadata(self) -> bool:
        return bool(self.config.metadata) and "meta.coef" in self.aux

    # ---- the numbers ----
    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(combined logits, pooled OOD features) for a preprocessed float32 batch (N, 3, S, S)."""
        if self.session is not None:
            logits, feats = self.session.run(None, {"image": np.ascontiguousarray(batch, np.float32)})
            return logits, feats
        import torch

        from .models import forward_with_features

        with self._lock, torch.inference_mode():
            logits, f = forward_with_features(self.net, torch.from_numpy(np.ascontiguousarray(batch)), self.ood_stages)
            return logits.float().numpy(), f.float().numpy()

    def checked_forward(self, batch: np.ndarray, check=None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`forward`; with ``check``, in chunks of :data:`CHECKED_ROWS` rows with ``check`` called
        before each, so that a long batch can be stopped between them (ONNX Runtime's rows do not depend
        on the batch they are in: the same bits either way; PyTorch's differ in the 7th digit)."""
        if check is None or len(batch) <= CHECKED_ROWS:
            if check is not None:
                check()
            return self.forward(batch)
        parts = []
        for i in range(0, len(batch), CHECKED_ROWS):
            check()
            parts.append(self.forward(np.ascontiguousarray(batch[i : i + CHECKED_ROWS])))
        return np.concatenate([q[0] for q in parts]), np.concatenate([q[1] for q in parts])

    def logits(self, batch: np.ndarray, check=None) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated combined logits and features; with TTA over the 8 flips/rotations in one batch
        (``check``: see :meth:`checked_forward`)."""
        from .preprocess import tta_logits, tta_views

        if not self.tta:
            return self.checked_forward(batch, check)
        n = len(batch)
        logits, feats = self.checked_forward(np.ascontiguousarray(np.concatenate(tta_views(batch))), check)
        return tta_logits(logits.reshape(8, n, -1)), feats[:n]

    def probabilities(self, batch: np.ndarray, meta_x: np.ndarray | None = None, check=None) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (N, 7) and features, through the bundle's calibration and metadata fusion.

        TTA combines the views exactly as ``skinlesion evaluate`` does (:func:`skinlesion.preprocess.tta_logits`).
        """
        from .posthoc import apply_metadata, calibrate

        logits, feats = self.logits(batch, check)
        probs = calibrate(logits, self.config.temperature, self.config.class_bias)
        if self.uses_metadata:
            if meta_x is None:
                from .posthoc import encode_metadata

                meta_x = encode_metadata([{}] * len(probs))
            probs = apply_metadata(np.log(np.clip(probs, 1e-12, None)), meta_x, self.aux)
        if not np.isfinite(probs).all():
            raise SkinLesionError("The model produced non-finite probabilities for this image; its weights may be damaged.")
        return probs, feats

    def quality_problems(self, images, feats: np.ndarray) -> list[list[str]]:
        """The photo-quality problems of each image (PIL or :class:`Reduced`; :mod:`skinlesion.quality`); none where the model has no check."""
        if self.quality is None:
            return [[] for _ in images]
        from .quality import check, features, working_image

        items = [self.reduce(im) for im in images]
        work = [working_image(self.prep, r.source) for r in items]
        x = features(work, feats if self.quality[1].get("uses_network_features") else None)
        return check(x, [r.size for r in items], *self.quality)

    def reduce(self, image, check=None) -> Reduced:
        """What the analysis keeps of a decoded PIL image (:class:`Reduced`; one already reduced is returned as is).
        ``check``: called between the steps (it raises to stop)."""
        if isinstance(image, Reduced):
            return image
        chroma = None
        if self.ood and (self.ood[1] or {}).get("min_chroma"):
            from .ood import upload_chroma

            chroma = upload_chroma(image)
            if check is not None:
                check()
        photo = self.photo_quality([image])[0]
        if check is not None:
            check()
        return Reduced(self.prep.to_source(image, check), image.size, chroma, photo)

    def skin_tones(self, images) -> list:
        """The skin tone (:mod:`skinlesion.skintone`) of each image (PIL or :class:`Reduced`), measured as the training
        images were (at the model's source resolution)."""
        from .skintone import measure

        return [measure(self.reduce(im).source, self.prep) for im in images]

    def photo_quality(self, images) -> list:
        """The check on each photo as uploaded (:mod:`skinlesion.photo_quality`): measured only where the photo
        is larger than the image the model sees; its thresholds are the module's, not the model's."""
        from .photo_quality import check

        side = self.prep.source_size or self.prep.input_size
        return [check(im, side) for im in images]

    def ood_scores(self, feats: np.ndarray) -> np.ndarray | None:
        if self.ood is None:
            return None
        from .ood import score

        return score(feats, *self.ood)

    # ---- images ----
    def predict(self, source, name: str | None = None, meta: dict | None = None) -> Prediction:
        """Predict one image (path or uploaded bytes), with optional ``meta`` (age, sex, localization)."""
        intake = open_image(source, name)
        return self.predict_images([intake.image], [intake.name], [intake.warnings], [meta or {}])[0]

    def predict_images(self, images, names, warnings=None, meta=None, rule: str | None = None, check=None) -> list[Prediction]:
        """Predict PIL images (or :class:`Reduced` ones); ``meta``: one dict (age, sex, localization; any may
        be missing) per image; ``rule``: this call's decision rule (default: the predictor's); ``check``:
        called between the stages (reduction, network, rules, photo quality), it raises to stop the call."""
        from .posthoc import analyse, decide, encode_metadata, rule_log_weights
        from . import skintone
        from .verdict import quality_advice, verdict

        rule = rule or self.rule
        rule_log_weights(self.config.decision, rule, len(self.labels))  # an unknown rule: one sentence, before any work
        stage = check or (lambda: None)
        images = [self.reduce(im, check) for im in images]
        stage()
        batch = self.prep.batch([r.source for r in images])
        meta_x = None
        if self.uses_metadata and meta is not None:
            try:
                meta_x = encode_metadata(list(meta))
            except ValueError as exc:
                raise SkinLesionError(f"Patient data: {exc}; leave a field empty when it is unknown.") from None
        stage()
        probs, feats = self.probabilities(batch, meta_x, check)
        stage()
        scores = self.ood_scores(feats)
        threshold = self.ood[1]["threshold"] if self.ood else None
        far = np.zeros(len(names), bool) if scores is None else scores > threshold
        grey = np.zeros(len(names), bool)
        if self.ood:
            from .ood import colourless

            grey = colourless(images, self.ood[1])
        flags = far | grey
        rules = analyse(probs, self.config, self.aux, flags)
        named = decide(probs, self.config.decision, rule)
        stage()
        problems = self.quality_problems(images, feats)
        tones = self.skin_tones(images)
        photos = [r.photo for r in images]  # measured at the photo's own resolution, as it was reduced
        codes = self.labels.codes
        mal_mask = np.asarray(self.labels.malignant_mask)
        out = []
        for i, name in enumerate(names):
            p = probs[i]
            top = int(named[i])
            notes = list(warnings[i]) if warnings else []
            score = None if scores is None else float(scores[i])
            reasons = [r for r, fired in (("colour", grey[i]), ("distance", far[i])) if fired]  # each check that fired
            if far[i]:
                notes.insert(0, OOD_WARNING.format(score=score, threshold=threshold))
            if grey[i]:
                notes.insert(0, COLOURLESS_WARNING)
            named_problems, advice = quality_advice(problems[i], photos[i])
            pred = Prediction(
                name=name,
                probabilities={c: float(v) for c, v in zip(codes, p)},
                top=codes[top],
                top_probability=float(p[top]),
                malignant_probability=float(p[mal_mask].sum()),
                ood_score=score,
                out_of_distribution=bool(flags[i]),
                warnings=notes,
                rule=rule,
                quality=named_problems,
                quality_advice=advice,
                photo_quality=photos[i],
                ood_reasons=reasons,
                ita=tones[i].ita,
                skin_tone=tones[i].band,
                skin_tone_outside=skintone.flag(tones[i], self.config) is not None,
                **rules[i],
            )
            pred.verdict = verdict(pred, self.config)
            if pred.verdict.skin_tone:  # the verdict's words travel in the warnings: CSV, API, console, app
                pred.warnings.append(pred.verdict.skin_tone)
            out.append(pred)
        return out

    def _torch_net(self):
        if self.net is None:
            with self._lock:
                if self.net is None:
                    import torch

                    from .bundle import load_model

                    torch.set_num_threads(self.threads)  # the heat map's pool, sized like the prediction's
                    self.net, _ = load_model(self.model_path)
        return self.net

    def explain(self, image, target: int | None = None, check=None) -> np.ndarray:
        """Grad-CAM heat map in [0, 1] at the model's input size; an ensemble's is the mean of its members'.
        ``check``: called before each member's map (it raises to stop)."""
        from .explain import gradcam

        net = self._torch_net()
        if target is None:
            target = int(self.probabilities(self.prep.batch([image]))[0].argmax())
        maps = []
        with self._lock:
            for m in net.members:
                if check is not None:
                    check()
                maps.append(gradcam(m, self.prep, image, target))
        heat = np.mean(maps, axis=0)
        return (heat - heat.min()) / (heat.max() - heat.min() + 1e-8)


def read_aux(weights: Path) -> dict:
    """Only the auxiliary tensors of a bundle (OOD, metadata, conformal), without reading the networks."""
    from safetensors import safe_open

    from .bundle import MEMBER_PREFIX

    with safe_open(str(weights), framework="numpy") as f:
        out = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(MEMBER_PREFIX)}
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in out.items()}


def expand_inputs(inputs) -> list[Path]:
    """Files, folders (their images, sorted) and globs, in the order given."""
    import glob

    paths: list[Path] = []
    for item in inputs:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            paths += [q for q in walk_files(p) if not q.name.startswith(".")]
        elif any(ch in s for ch in "*?["):
            matched = sorted(glob.glob(s, recursive=True))
            if not matched:
                raise SkinLesionError(f"The pattern {s} matches no file.")
            paths += [Path(m) for m in matched if Path(m).is_file()]
        else:
            paths.append(p)
    return paths


def error_row(name: str, error: str, codes=CODES) -> dict:
    """The row of a file that could not be analysed: its name and error, every other column empty."""
    return {**{c: None for c in row_columns(codes)}, "image": name, "top_class": "", "error": error}


class Cancelled(Exception):
    """The caller gave up on :func:`predict_files` (its ``cancelled`` check said so); no rows are returned."""


def predict_files(
    predictor: Predictor,
    paths,
    batch_size: int = 32,
    meta: dict | None = None,
    progress=None,
    rule: str | None = None,
    *,
    max_pixels: int | None = None,
    cancelled=None,
    formats=None,
    budget=None,
) -> list[dict]:
    """One row per file; a bad file gets a row with its error and the batch carries on.

    ``meta``: image id (file name without extension) -> dict of age, sex, localization.
    ``progress``: called with the number of files done after each batch. ``rule``: the decision rule
    (default: the predictor's). Files are decoded one at a time, and each is reduced to what the
    analysis needs (:class:`Reduced`) before the next is read, so one decoded file is held at a time;
    ``max_pixels`` bounds the reduced pixels a batch holds (a batch is analysed early rather than pass
    it). ``budget``: decoded pixels shared with other calls (``budget.hold(pixels, check)``, a context
    manager; see :class:`skinlesion.serve.limits.PixelBudget`), held from a file's header to its
    reduction. ``cancelled``: a callable checked before each file, between the blocks of its decode,
    between its reduction's steps and between a batch's stages; when it returns true,
    :class:`Cancelled` is raised. ``formats``: the image formats accepted (see :func:`open_image`).
    """
    import contextlib

    rows = []
    good, names, notes = [], [], []
    held = 0

    def stop_if_cancelled():
        if cancelled is not None and cancelled():
            good.clear()
            raise Cancelled()

    check = stop_if_cancelled if cancelled is not None else None

    def flush():
        nonlocal held
        if good:
            stop_if_cancelled()
            m = [(meta or {}).get(Path(n).stem, {}) for n in names]
            rows.extend(p.row() for p in predictor.predict_images(good, names, notes, m, rule=rule, check=check))
            good.clear(), names.clear(), notes.clear()
            held = 0
            if progress:
                progress(len(rows))

    for path in paths:
        stop_if_cancelled()
        with contextlib.ExitStack() as decoded:  # the budget's pixels, from the header until the reduction
            hold = None if budget is None else (lambda px: decoded.enter_context(budget.hold(px, check)))
            try:
                intake = open_image(path, str(path), formats=formats, check=check, hold=hold)
            except SkinLesionError as exc:
                flush()
                rows.append(error_row(str(path), str(exc), predictor.labels.codes))
                continue
            item, warned = predictor.reduce(intake.image, check), intake.warnings
            del intake  # the decoded pixels go here, before the next file is read
        pixels = item.source.size[0] * item.source.size[1]
        if max_pixels is not None and good and held + pixels > max_pixels:
            flush()
        good.append(item), names.append(str(path)), notes.append(warned)
        held += pixels
        if len(good) >= batch_size:
            flush()
    flush()
    return rows
