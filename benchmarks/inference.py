"""CPU inference latency: PyTorch eager vs ONNX Runtime, side by side in one run.

For the shipped default model and for ResNet50 at 224 px (random weights), on
``--threads`` CPU threads (default 2), measures per-image latency p50/p95 of

- the model alone, PyTorch eager vs ONNX Runtime (batch 1, preprocessed input), and
- the whole upload-to-result path: JPEG decode, intake, preprocessing, prediction
  (with the OOD score; no Grad-CAM), through :class:`skinlesion.predict.Predictor`.

    python benchmarks/inference.py [--threads 2] [--repeats 50] [--image ../shared/data/fullres/ISIC_0024310.jpg]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _lat(fn, repeats: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95))}


def resnet50_model(workdir: Path) -> Path:
    """A ResNet50 (random weights) saved as a skinlesion model at 224 px, exported to ONNX."""
    import timm

    from skinlesion.export import export_onnx
    from skinlesion.bundle import Member, ModelConfig, save_bundle
    from skinlesion.models import resolve_preprocess

    net = timm.create_model("resnet50", num_classes=7).eval()
    cfg = ModelConfig(preprocess=resolve_preprocess("resnet50", input_size=224).to_dict(), members=[Member("resnet50")])
    path = save_bundle(net, cfg, workdir / "resnet50")
    export_onnx(path, workdir / "resnet50.onnx")
    return path


def bench(name: str, weights: Path, onnx: Path, image: Path, threads: int, repeats: int) -> dict:
    from skinlesion.predict import Predictor

    pt = Predictor(weights, backend="torch", threads=threads)
    ox = Predictor(onnx, backend="onnx", threads=threads)
    from skinlesion.intake import open_image

    x = pt.prep.batch([open_image(image).image])
    data = image.read_bytes()
    r = {
        "model": name,
        "input": pt.prep.input_size,
        "eager": _lat(lambda: pt.forward(x), repeats),
        "onnx": _lat(lambda: ox.forward(x), repeats),
        "upload_to_result_eager": _lat(lambda: pt.predict(data, "upload.jpg"), repeats),
        "upload_to_result_onnx": _lat(lambda: ox.predict(data, "upload.jpg"), repeats),
    }
    r["onnx_speedup_p50"] = r["eager"]["p50_ms"] / r["onnx"]["p50_ms"]
    return r


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--image", default=str(REPO.parent / "shared" / "data" / "fullres" / "ISIC_0024310.jpg"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from skinlesion.export import export_onnx
    from skinlesion.bundle import default_model_path

    work = Path(tempfile.mkdtemp(prefix="skinlesion-inference-"))
    default_onnx = work / "default.onnx"
    export_onnx("default", default_onnx)
    rows = [
        bench("default (shipped)", default_model_path(), default_onnx, Path(args.image), args.threads, args.repeats),
        bench("resnet50 224px", resnet50_model(work), work / "resnet50.onnx", Path(args.image), args.threads, args.repeats),
    ]
    print(f"CPU, {args.threads} threads, {args.repeats} repeats, batch 1")
    print(
        f"{'model':<20} {'eager p50/p95':>16} {'onnx p50/p95':>16} {'speedup':>8} {'upload->result eager':>22} {'upload->result onnx':>21}"
    )
    for r in rows:
        f = lambda d: f"{d['p50_ms']:.1f}/{d['p95_ms']:.1f} ms"  # noqa: E731
        print(
            f"{r['model']:<20} {f(r['eager']):>16} {f(r['onnx']):>16} {r['onnx_speedup_p50']:7.2f}x "
            f"{f(r['upload_to_result_eager']):>22} {f(r['upload_to_result_onnx']):>21}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
