"""Read throughput of training's train loader: litdata streaming chunks against the memory-mapped cache, one run.

Writes a DermaMNIST-shaped ``.npz`` of ``--images`` random uint8 images at ``--size`` px, prepares it both ways
(``skinlesion prepare --size S`` and ``prepare --format litdata --size S --chunk-mb M``: the same pixels), makes a
90/10 train/val manifest and then, for each, builds the loaders exactly as ``skinlesion train`` does
(``skinlesion.train.build_loaders``, ``--augment-on device``: uint8 batches, no augmentation in the loop) and times
full epochs of the train loader: images/s, and the ratio litdata / cache. The rounds alternate (cache, litdata,
cache, ...) so that a noisy machine slows both alike; the first round of each warms the page cache and is reported
apart. Only reading is timed: no model, no augmentation.

    python benchmarks/litdata_read.py                       # 3000 images at 256 px, 64 MB chunks, 3 rounds
    python benchmarks/litdata_read.py --images 300 --size 64 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--chunk-mb", type=float, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for both loaders")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work folder [a temporary one]")
    args = ap.parse_args()

    import numpy as np
    import pandas as pd

    from skinlesion.data import load_dataset
    from skinlesion.data.prepare import prepare
    from skinlesion.data.shards import prepare_litdata
    from skinlesion.data.split import read_manifest
    from skinlesion.recipe import TrainConfig
    from skinlesion.train import build_loaders

    work = Path(args.dir or tempfile.mkdtemp(prefix="litdata_read_"))
    work.mkdir(parents=True, exist_ok=True)
    npz = work / "data.npz"
    if not npz.exists():
        rng = np.random.default_rng(0)
        imgs = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
        np.savez(npz, train_images=imgs, train_labels=rng.integers(0, 7, (args.images, 1)))
    ds = load_dataset(npz)
    t0 = time.perf_counter()
    if not (work / "cache" / "cache.json").exists():
        prepare(npz, work / "cache", args.size, progress=False)
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (work / "chunks" / "skinlesion_litdata.json").exists():
        prepare_litdata(ds, work / "chunks", args.size, source=npz, chunk_mb=args.chunk_mb, progress=False)
    t_lit = time.perf_counter() - t0
    ids = ds.meta["image_id"].to_numpy()
    split = np.where(np.arange(len(ids)) % 10 == 0, "val", "train")
    manifest_path = work / "split.csv"
    pd.DataFrame({"image_id": ids, "lesion_id": ds.meta["lesion_id"], "dx": ds.meta["dx"], "split": split}).to_csv(
        manifest_path, index=False
    )
    manifest = read_manifest(manifest_path)

    loaders = {}
    for name in ("cache", "chunks"):
        d = load_dataset(work / name)
        cfg = TrainConfig(
            data=str(work / name), split=str(manifest_path), out=str(work / "unused"), backbone="resnet18",
            batch_size=args.batch_size, num_workers=args.workers, augment_on="device", accelerator="cpu",
        )  # fmt: skip
        loaders[name] = build_loaders(cfg, d, manifest)[4]

    def epoch(loader) -> tuple[int, float]:
        n, t = 0, time.perf_counter()
        for x, _, _ in loader:
            n += len(x)
            _ = int(x[:, 0, 0, 0].sum())  # touch the batch
        return n, time.perf_counter() - t

    rates = {"cache": [], "chunks": []}
    warm = {}
    for r in range(args.rounds + 1):
        for name in ("cache", "chunks"):
            n, dt = epoch(loaders[name])
            (rates[name].append(n / dt) if r else warm.__setitem__(name, n / dt))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    result = {
        "images": args.images,
        "size": args.size,
        "chunk_mb": args.chunk_mb,
        "chunks": len(json.loads((work / "chunks" / "index.json").read_text())["chunks"]),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "prepare_s": {"cache": round(t_cache, 2), "litdata": round(t_lit, 2)},
        "first_round_img_s": {k: round(v) for k, v in warm.items()},
        "img_s_median": {k: round(v) for k, v in med.items()},
        "img_s_rounds": {k: [round(v) for v in vs] for k, vs in rates.items()},
        "ratio_litdata_over_cache": round(med["chunks"] / med["cache"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
