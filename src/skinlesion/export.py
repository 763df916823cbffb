"""ONNX export with a parity check: a model that disagrees with PyTorch is not written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SkinLesionError

TOLERANCE = 1e-4  # max absolute difference in calibrated probability


def _wrapper(net, stages: list[str]):
    import torch

    from .ood import forward_with_features

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


def export_onnx(model: str | Path, out: str | Path, *, check_images=(), tolerance: float = TOLERANCE) -> dict:
    """Export ``model`` to ``out`` (.onnx, outputs ``logits`` and ``features``) after checking parity."""
    import torch

    from .calibration import softmax
    from .models import load_model, resolve_model_path

    out = Path(out)
    if out.suffix != ".onnx":
        raise SkinLesionError(f"--out {out} must end in .onnx.")
    net, cfg = load_model(model)
    wrapped = _wrapper(net, (cfg.ood or {}).get("stages", []))
    prep = cfg.prep
    dummy = torch.zeros(1, 3, prep.input_size, prep.input_size)
    tmp = out.with_suffix(".onnx.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(wrapped, (dummy,), str(tmp), input_names=["image"], output_names=["logits", "features"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
                      opset_version=17, dynamo=False)
    import onnxruntime as ort

    batch = parity_inputs(prep, check_images)
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    o_logits, o_feats = sess.run(None, {"image": batch})
    with torch.inference_mode():
        t_logits, t_feats = (v.numpy() for v in wrapped(torch.from_numpy(batch)))
    diff = float(np.abs(softmax(o_logits, cfg.temperature) - softmax(t_logits, cfg.temperature)).max())
    if not diff <= tolerance:
        tmp.unlink(missing_ok=True)
        raise SkinLesionError(
            f"The ONNX export disagrees with PyTorch (max probability difference {diff:.2e} > {tolerance:.0e}); "
            "it was not written. Try another opset or report the backbone."
        )
    tmp.replace(out)
    # the config travels beside the .onnx so it can be used on its own
    src = resolve_model_path(model)
    cfg_json = src.with_suffix(".json")
    if out.with_suffix(".json") != cfg_json:
        out.with_suffix(".json").write_text(cfg_json.read_text())
    if out.with_suffix(".safetensors") != src and not out.with_suffix(".safetensors").exists():
        import shutil

        shutil.copy(src, out.with_suffix(".safetensors"))  # OOD tensors and Grad-CAM need the weights
    return {"path": str(out), "max_probability_difference": diff, "n_checked": int(len(batch)),
            "feature_max_abs_difference": float(np.abs(o_feats - t_feats).max()) if o_feats.size else 0.0}
