"""The predictor behind ``skinlesion predict`` and the app.

Loads a model once (run directory, model file, exported ``.onnx`` or ``default``),
applies the model's stored preprocessing, and returns calibrated probabilities for
the seven classes, the top class, a malignant/benign summary, an out-of-distribution
flag and any warnings. Runs on PyTorch or, when an exported ``.onnx`` model lies
beside the weights, on ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .calibration import softmax
from .classes import CODES, DIAGNOSES, MALIGNANT_MASK
from .errors import SkinLesionError
from .intake import open_image

OOD_WARNING = (
    "This image does not look like the dermoscopic images the model was trained on "
    "(out-of-distribution score {score:.1f} > threshold {threshold:.1f}); the result below is unreliable."
)


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

    @property
    def diagnosis(self):
        return DIAGNOSES[CODES.index(self.top)]

    def row(self) -> dict:
        return {"image": self.name, "top_class": self.top, "probability": round(self.top_probability, 6),
                "malignant_probability": round(self.malignant_probability, 6),
                **{c: round(p, 6) for c, p in self.probabilities.items()},
                "ood_score": None if self.ood_score is None else round(self.ood_score, 2),
                "warnings": " | ".join(self.warnings), "error": ""}


class Predictor:
    """Load once, predict many. ``backend``: auto (ONNX when an .onnx lies beside), torch or onnx."""

    def __init__(self, model: str | Path = "default", *, backend: str = "auto", tta: bool | None = None,
                 threads: int | None = None):
        from .models import load_config, resolve_model_path

        path = resolve_model_path(model)
        onnx_path = path if path.suffix == ".onnx" else path.with_suffix(".onnx")
        weights = path.with_suffix(".safetensors")
        if str(model) == "default":  # the package folder may be read-only: its export lives in the user cache
            from .models import default_onnx_path

            cached = default_onnx_path()
            if cached.exists() and cached.stat().st_mtime >= weights.stat().st_mtime:
                onnx_path = cached
        self.config = load_config(weights if weights.exists() else onnx_path)
        self.prep = self.config.prep
        self.tta = self.config.tta if tta is None else tta  # None: the model's own choice, made on val
        if backend == "auto":
            backend = "onnx" if onnx_path.exists() else "torch"
        self.backend = backend
        self.model_path = path
        self.ood = None
        if backend == "onnx":
            if not onnx_path.exists():
                raise SkinLesionError(f"No exported model {onnx_path.name}; run `skinlesion export {model} --out {onnx_path}` first.")
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            self.net = None
            extra = _read_extra(weights if weights.exists() else onnx_path.with_suffix(".safetensors"))
        elif backend == "torch":
            import torch

            from .models import load_model

            if threads:
                torch.set_num_threads(threads)
            self.net, _, extra = load_model(weights, with_extra=True)
            self.session = None
        else:
            raise SkinLesionError(f"Unknown backend {backend!r}; use auto, torch or onnx.")
        if self.config.ood and f"ood.mean.0" in extra:
            self.ood = (extra, self.config.ood)
        self.ood_stages = self.config.ood["stages"] if self.ood else []

    # ---- the numbers ----
    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, pooled features) for a preprocessed float32 batch (N, 3, S, S)."""
        if self.session is not None:
            logits, feats = self.session.run(None, {"image": batch.astype(np.float32)})
            return logits, feats
        import torch

        from .ood import forward_with_features

        with torch.inference_mode():
            logits, f = forward_with_features(self.net, torch.from_numpy(batch), self.ood_stages)
            return logits.float().numpy(), f.float().numpy()

    def probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (N, 7) and features; with TTA, over the 8 flips/rotations.

        TTA combines the views exactly as ``skinlesion evaluate --tta`` does
        (:func:`skinlesion.preprocess.tta_logits`), then applies the temperature.
        """
        from .preprocess import tta_logits

        logits, feats = self.forward(batch)
        if self.tta:
            views = [np.rot90(batch, k, axes=(2, 3)) for k in range(4)]
            views = [v for r in views for v in (r, r[..., ::-1])]
            logits = tta_logits([logits] + [self.forward(np.ascontiguousarray(v))[0] for v in views[1:]])
        return softmax(logits, self.config.temperature), feats

    def ood_scores(self, feats: np.ndarray) -> np.ndarray | None:
        if self.ood is None:
            return None
        from .ood import score

        return score(feats, *self.ood)

    # ---- images ----
    def predict(self, source, name: str | None = None) -> Prediction:
        """Predict one image (path or uploaded bytes). Bad files raise SkinLesionError."""
        intake = open_image(source, name)
        return self.predict_images([intake.image], [intake.name], [intake.warnings])[0]

    def predict_images(self, images, names, warnings=None) -> list[Prediction]:
        batch = self.prep.batch(images)
        probs, feats = self.probabilities(batch)
        scores = self.ood_scores(feats)
        out = []
        for i, name in enumerate(names):
            p = probs[i]
            top = int(p.argmax())
            notes = list(warnings[i]) if warnings else []
            is_ood = False
            score = None
            if scores is not None:
                score = float(scores[i])
                threshold = self.ood[1]["threshold"]
                is_ood = score > threshold
                if is_ood:
                    notes.insert(0, OOD_WARNING.format(score=score, threshold=threshold))
            out.append(Prediction(
                name=name, probabilities={c: float(v) for c, v in zip(CODES, p)}, top=CODES[top],
                top_probability=float(p[top]), malignant_probability=float(p[np.asarray(MALIGNANT_MASK)].sum()),
                ood_score=score, out_of_distribution=is_ood, warnings=notes))
        return out

    def explain(self, image, target: int | None = None) -> np.ndarray:
        """Grad-CAM heat map in [0, 1] at the model's input size (PyTorch back end)."""
        from .explain import gradcam

        net = self.net
        if net is None:
            from .models import load_model

            net, _ = load_model(self.model_path.with_suffix(".safetensors"))
            self.net = net
        return gradcam(net, self.prep, image, target)


def _read_extra(weights: Path) -> dict:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(str(weights)).items() if k.startswith("ood.")}


def expand_inputs(inputs) -> list[Path]:
    """Files, folders (their images, sorted) and globs, in the order given."""
    import glob

    paths: list[Path] = []
    for item in inputs:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
        elif any(ch in s for ch in "*?["):
            matched = sorted(glob.glob(s, recursive=True))
            if not matched:
                raise SkinLesionError(f"The pattern {s} matches no file.")
            paths += [Path(m) for m in matched if Path(m).is_file()]
        else:
            paths.append(p)
    return paths


def predict_files(predictor: Predictor, paths, batch_size: int = 32) -> list[dict]:
    """One row per file; a bad file gets a row with its error and the batch carries on."""
    rows = []
    good, names, notes = [], [], []

    def flush():
        if good:
            rows.extend(p.row() for p in predictor.predict_images(good, names, notes))
            good.clear(), names.clear(), notes.clear()

    for path in paths:
        try:
            intake = open_image(path, str(path))
        except SkinLesionError as exc:
            flush()
            rows.append({"image": str(path), "top_class": "", "error": str(exc)})
            continue
        good.append(intake.image), names.append(str(path)), notes.append(intake.warnings)
        if len(good) >= batch_size:
            flush()
    flush()
    return rows
