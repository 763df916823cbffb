"""CPU inference latency: PyTorch eager vs ONNX Runtime, side by side in one run.

For the shipped default model and for ResNet50 at 224 px (random weights), on
``--threads`` CPU threads (default 2), measures per-image latency p50/p95 of

- the model alone, PyTorch eager vs ONNX Runtime (batch 1, preprocessed input), and
- the whole upload-to-result path: JPEG decode, intake, preprocessing, prediction
  (with the OOD score; no Grad-CAM), through :class:`skinlesion.predict.Predictor`.

``--neighbour`` adds, for the shipped model, upload-to-result (ONNX Runtime) and heat-map p50
idle and then beside a CPU-bound neighbour process (torch matrix products on every core, its
threads allowed to spin, as another job on a shared machine would run), with the thread pools
sized as the app and CLI size them (:mod:`skinlesion.runtime`), and the loaded/idle ratios.

    python benchmarks/inference.py [--threads 2] [--repeats 50] [--image ../shared/data/fullres/ISIC_0024310.jpg]
    python benchmarks/inference.py --neighbour [--repeats 30]
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


NEIGHBOUR = """
import os, sys, torch
os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
a = torch.randn(1024, 1024)
print("ready", flush=True)
while True:
    a = torch.tanh(a @ a.T / 1024)
"""


def loaded(image: Path, repeats: int) -> dict:
    """Upload-to-result and heat-map p50 of the shipped model, idle and beside a CPU-bound neighbour, in one run."""
    import subprocess
    import sys

    from skinlesion.intake import open_image
    from skinlesion.predict import Predictor
    from skinlesion.runtime import usable_cores

    p = Predictor("default")  # as the CLI builds it: ONNX Runtime when the export is current, threads sized to the cores
    img = open_image(image).image
    data = image.read_bytes()
    p.explain(img)  # load the PyTorch members for the heat map once

    def measure():
        return {
            "upload_to_result": _lat(lambda: p.predict(data, "upload.jpg"), repeats),
            "heat_map": _lat(lambda: p.explain(img), max(5, repeats // 3), warmup=2),
        }

    idle = measure()
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], stdout=subprocess.PIPE, text=True)
    try:
        assert neighbour.stdout.readline().strip() == "ready"  # it is computing before we measure
        busy = measure()
    finally:
        neighbour.kill()
        neighbour.wait()
    return {
        "backend": p.backend,
        "threads": p.threads,
        "usable_cores": usable_cores(),
        "idle": idle,
        "loaded": busy,
        "ratio_upload_to_result_p50": busy["upload_to_result"]["p50_ms"] / idle["upload_to_result"]["p50_ms"],
        "ratio_heat_map_p50": busy["heat_map"]["p50_ms"] / idle["heat_map"]["p50_ms"],
    }


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--image", default=str(REPO.parent / "shared" / "data" / "fullres" / "ISIC_0024310.jpg"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--neighbour", action="store_true", help="idle vs beside a CPU-bound neighbour process (shipped model)")
    args = ap.parse_args(argv)
    if args.neighbour:
        from skinlesion.runtime import passive_waits

        passive_waits()  # as the CLI and the app do, before torch is imported
        r = loaded(Path(args.image), args.repeats)
        f = lambda d: f"{d['p50_ms']:.1f} ms"  # noqa: E731
        print(f"shipped model, {r['backend']}, {r['threads']} thread(s) on {r['usable_cores']} usable core(s)")
        print(f"{'':<18} {'idle p50':>10} {'loaded p50':>11} {'loaded/idle':>12}")
        for k, ratio in (("upload_to_result", "ratio_upload_to_result_p50"), ("heat_map", "ratio_heat_map_p50")):
            print(f"{k:<18} {f(r['idle'][k]):>10} {f(r['loaded'][k]):>11} {r[ratio]:11.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps(r, indent=2))
        return [r]
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
