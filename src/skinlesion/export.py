"""ONNX export with a parity check: a model that disagrees with PyTorch is not written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SkinLesionError, make_folder, os_error_in, write_failure

TOLERANCE = 1e-4  # max absolute difference in calibrated probability


def _wrapper(net, stages: list[str]):
    import torch

    from .models import forward_with_features

    class LogitsAndFeatures(torch.nn.Module):
        """Outputs the logits and the pooled stage features the OOD score needs."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, image):
            return forward_with_features(self.net, image, stages)

    return LogitsAndFeatures(net).eval()


def parity_inputs(prep, images=(), n_random: int = 4, seed: int = 0) -> np.ndarray:
    """Random noise images plus real (or synthetic lesion) images, preprocessed."""
    from PIL import Image

    from .data.synthetic import _draw
    from .intake import load_rgb

    rng = np.random.default_rng(seed)
    pics = [Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)) for _ in range(n_random)]
    pics += [_draw(c, rng, (600, 450)) for c in ("mel", "nv", "bcc")]
    pics += [load_rgb(p) for p in images]
    return prep.batch(pics)


def default_out(model: str | Path) -> Path:
    """Where an export goes without --out: beside the bundle, or (the shipped model in a read-only
    install) in the user cache."""
    import os

    from .bundle import default_onnx_path, resolve_model_path

    weights = resolve_model_path(model)
    if str(model) == "default" and not os.access(weights.parent, os.W_OK):
        return default_onnx_path()
    return weights.with_suffix(".onnx")


def export_onnx(model: str | Path, out: str | Path | None = None, *, check_images=(), tolerance: float = TOLERANCE) -> dict:
    """Export ``model`` to ``out`` (.onnx, outputs ``logits`` and ``features``) after checking parity.

    The file records the hash of the bundle it was made from (:func:`skinlesion.bundle.onnx_is_current`);
    exported elsewhere than beside the bundle, the bundle's two files are copied beside it.
    """
    import shutil

    import onnx
    import torch

    from .bundle import ONNX_HASH_KEY, bundle_hash, load_model, resolve_model_path
    from .posthoc import calibrate

    out = Path(out) if out is not None else default_out(model)
    if out.suffix != ".onnx":
        raise SkinLesionError(f"--out {out} must end in .onnx.")
    if out.is_dir():
        raise SkinLesionError(f"--out {out} is a folder; pass a file name ending in .onnx.")
    src = resolve_model_path(model)
    net, cfg = load_model(src)
    wrapped = _wrapper(net, (cfg.ood or {}).get("stages", []))
    prep = cfg.prep
    dummy = torch.zeros(1, 3, prep.input_size, prep.input_size)
    make_folder(out.parent)
    tmp = out.with_name(f".{out.name}.tmp")
    parts = [out.with_name(f".{out.stem}{suffix}.tmp") for suffix in (".safetensors", ".json")]
    try:
        torch.onnx.export(
            wrapped,
            (dummy,),
            str(tmp),
            input_names=["image"],
            output_names=["logits", "features"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        import onnxruntime as ort

        batch = parity_inputs(prep, check_images)
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        o_logits, o_feats = sess.run(None, {"image": batch})
        with torch.inference_mode():
            t_logits, t_feats = (v.numpy() for v in wrapped(torch.from_numpy(batch)))
        diff = float(
            np.abs(calibrate(o_logits, cfg.temperature, cfg.class_bias) - calibrate(t_logits, cfg.temperature, cfg.class_bias)).max()
        )
        if not diff <= tolerance:
            raise SkinLesionError(
                f"The ONNX export disagrees with PyTorch (max probability difference {diff:.2e} > {tolerance:.0e}); "
                "it was not written. Try another opset or report the backbone."
            )
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_HASH_KEY, bundle_hash(src)
        onnx.save(proto, str(tmp))
        if out.with_suffix(".safetensors") != src:  # keep the bundle beside its export (written whole, then renamed)
            for suffix, part in zip((".safetensors", ".json"), parts):
                shutil.copyfile(src.with_suffix(suffix), part)
            for suffix, part in zip((".safetensors", ".json"), parts):
                part.replace(out.with_suffix(suffix))
        tmp.replace(out)
    except (OSError, RuntimeError) as exc:  # a full or read-only disk: one sentence, nothing half-written left behind
        err = os_error_in(exc)
        if err is None:
            raise
        raise SkinLesionError(write_failure(out, err, "--out")) from None
    finally:
        for leftover in (tmp, *parts):
            leftover.unlink(missing_ok=True)
    return {
        "path": str(out),
        "max_probability_difference": diff,
        "n_checked": int(len(batch)),
        "feature_max_abs_difference": float(np.abs(o_feats - t_feats).max()) if o_feats.size else 0.0,
    }
