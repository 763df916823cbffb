"""Training throughput on full-resolution HAM10000-shaped data, side by side in one run.

Trains ResNet50 at 224 px for a fixed number of steps on synthetic 600x450 JPEGs (made here, in
parallel) and reports images/s for

  (a)  the reference recipe: batch 4, fp32, no DataLoader workers, Pillow resize on the fly;
  (b)  the raw-JPEG path: workers decode each JPEG to the source size (the cache's), the training
       augmentation runs on the device over the whole batch (skinlesion.augment);
  (c)  the prepared cache (`skinlesion prepare --size 256`) with device augmentation: the cache kept
       in GPU memory when it fits (batches indexed there), else uint8 batches from pinned memory;
  (c') the prepared cache with the per-sample augmentation on DataLoader workers (PIL, before this
       issue's change; `--augment-on workers`);
  (d)  compute only: tensors already on the device, the ceiling for the others;

with bf16 autocast + channels_last on a GPU, and the ratios (c)/(d), (c)/(a), (c)/(c'). It also
measures the augmentation's own cost per image, batched against per-sample, in this process (on a
CPU the ratio the issue asks for), and JPEG decoding: Pillow's full decode against its reduced-size
decode (`draft`), and on a GPU nvJPEG (`torchvision.io.decode_jpeg(device="cuda")`).

    python benchmarks/throughput.py                 # GPU if present, else CPU defaults
    python benchmarks/throughput.py --smoke         # a few steps on tiny data (runs in `make test`)
    python benchmarks/throughput.py --make-data DIR --images 7000   # only write a synthetic dataset
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SIZES = (600, 450)


def _draw_one(job):
    """Write one synthetic image (a worker of :func:`make_data`): its own generator, so any worker count gives the same files."""
    import numpy as np

    from skinlesion.data.synthetic import _draw

    path, code, seed, size = job
    _draw(code, np.random.default_rng(seed), size).save(path, quality=90)


def make_data(root: str | Path, n_images: int, *, size=SIZES, seed: int = 0, workers: int | None = None) -> Path:
    """A HAM10000-shaped folder of ``n_images`` synthetic JPEGs (skinlesion.data.synthetic's look, HAM10000's class
    shares, one to four images per lesion), drawn in parallel. Returns ``root``; an existing one is kept."""
    import numpy as np
    import pandas as pd

    from skinlesion.classes import CODES
    from skinlesion.data.synthetic import _WEIGHTS

    root = Path(root)
    if (root / "HAM10000_metadata.csv").exists():
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, lesion = [], 0
    while len(rows) < n_images:
        code = CODES[int(rng.choice(len(CODES), p=_WEIGHTS / _WEIGHTS.sum()))]
        for _ in range(min(int(rng.choice([1, 2, 3, 4], p=[0.7, 0.18, 0.08, 0.04])), n_images - len(rows))):
            rows.append({"lesion_id": f"HAM_{lesion:07d}", "image_id": f"ISIC_{len(rows):07d}", "dx": code, "dx_type": "histo"})
        lesion += 1
    meta = pd.DataFrame(rows).assign(age=50.0, sex="male", localization="back")
    jobs = [(str(root / "images" / f"{r.image_id}.jpg"), r.dx, (seed, k), tuple(size)) for k, r in enumerate(meta.itertuples())]
    workers = workers or max(1, len(os.sched_getaffinity(0)))
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_draw_one, jobs, chunksize=32))
    else:
        for job in jobs:
            _draw_one(job)
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)  # last: its presence means the folder is complete
    return root


def _step_fn(model, device, bf16: bool, channels_last: bool):
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def _timed(loader, step, steps: int, warmup: int, device) -> float:
    import torch

    it = iter(loader)
    n = 0
    t0 = None
    for i in range(warmup + steps):
        try:
            x, y = next(it)[:2]
        except StopIteration:
            it = iter(loader)
            x, y = next(it)[:2]
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        step(x, y)
        if i >= warmup:
            n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


class _OnDevice:
    """A PixelSet loader as training sees it: each batch's plan drawn on the host (LesionModule.on_before_batch_transfer),
    the batch copied to the device without blocking, augmented there (on_after_batch_transfer)."""

    def __init__(self, loader, device):
        self.loader, self.device, self.set = loader, device, loader.dataset

    def __iter__(self):
        for batch in self.loader:
            x, y, pos, plan = self.set.with_plan(batch, 0)
            to = {"device": self.device, "non_blocking": True}
            plan = {k: v.to(**to) if hasattr(v, "to") else v for k, v in plan.items()}
            yield self.set.augmented((x.to(**to), y.to(**to), pos, plan))[:2]


def _augment_cost(cached, idx, prep, device, batch: int, n: int) -> dict:
    """ms per image of the augmentation alone, per-sample (train_transform in this process: one core) against batched
    (BatchAugment on ``device``; on a CPU also with torch held to one thread, the per-core cost), interleaved five
    times; the medians and their ratios."""
    import numpy as np
    import torch

    from skinlesion.data.loader import ImageSet, PixelSet

    one = ImageSet(cached, idx[:n], prep.train_transform(), preload=False)
    pixels = PixelSet(cached, idx[:n], prep)
    batches = [pixels.__getitems__(list(range(a, min(n, a + batch)))) for a in range(0, n, batch)]
    batches = [(x.to(device), pos) for x, _, pos in batches]

    def batched(epoch):
        for x, pos in batches:
            pixels.augment(x, epoch, pos.numpy())
        if device.type == "cuda":
            torch.cuda.synchronize()

    one[(0, 0)]
    batched(0)
    threads = torch.get_num_threads()
    per, bat, bat1 = [], [], []
    for rep in range(5):
        t = time.perf_counter()
        for i in range(n):
            one[(rep, i)]
        per.append((time.perf_counter() - t) / n * 1e3)
        t = time.perf_counter()
        batched(rep)
        bat.append((time.perf_counter() - t) / n * 1e3)
        if device.type == "cpu":
            torch.set_num_threads(1)
            t = time.perf_counter()
            batched(rep)
            bat1.append((time.perf_counter() - t) / n * 1e3)
            torch.set_num_threads(threads)
    p, b = float(np.median(per)), float(np.median(bat))
    out = {"aug_ms_per_sample": p, "aug_ms_batched": b, "aug_per_sample_over_batched": p / b, "aug_images": n, "aug_threads": threads}
    if bat1:
        out.update(aug_ms_batched_1thread=float(np.median(bat1)), aug_per_sample_over_batched_1thread=p / float(np.median(bat1)))
    return out


def _decode_cost(ds, sizes, gpu: bool, n: int = 32) -> dict:
    """JPEG decoding to the source stage, ms per image on one core: Pillow in full, Pillow with ``draft`` (the DCT
    scaled to the smallest size at least the target's), and the mean/max pixel difference draft makes; nvJPEG on a GPU."""
    import numpy as np
    from PIL import Image

    from skinlesion.preprocess import Preprocess

    paths = [str(p) for p in ds.meta["path"].iloc[:n]]
    out = {}
    for size in sizes:
        prep = Preprocess(input_size=size, source_size=size)
        res = {}
        for mode in ("full", "draft"):
            t = time.perf_counter()
            arrs = []
            for p in paths:
                with Image.open(p) as im:
                    if mode == "draft":
                        im.draft("RGB", (size, size))
                    arrs.append(np.asarray(prep.to_source(im.convert("RGB")), dtype=np.int16))
            res[mode] = ((time.perf_counter() - t) / n * 1e3, arrs)
        with Image.open(paths[0]) as im:
            full_size = im.size
            im.draft("RGB", (size, size))
            scale = full_size[0] / im.size[0]
        diff = np.abs(np.stack(res["full"][1]) - np.stack(res["draft"][1]))
        out[f"decode_{size}"] = {
            "full_ms": res["full"][0],
            "draft_ms": res["draft"][0],
            "draft_scale": f"1/{scale:g}",
            "draft_mean_abs_levels": float(diff.mean()),
            "draft_max_levels": int(diff.max()),
        }
    if gpu:
        import torch
        from torchvision.io import decode_jpeg, read_file

        data = [read_file(p) for p in paths * 8]
        decode_jpeg(data[:8], device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        decode_jpeg(data, device="cuda")
        torch.cuda.synchronize()
        out["nvjpeg_images_per_s"] = len(data) / (time.perf_counter() - t)
    return out


def run(args) -> dict:
    import numpy as np
    import timm
    import torch
    from torchvision import transforms as T

    from skinlesion.data import load_dataset
    from skinlesion.data.loader import ImageSet, PixelSet, default_workers, make_loader
    from skinlesion.data.prepare import prepare
    from skinlesion.models import resolve_preprocess

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    gpu = device.type == "cuda"
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="skinlesion-throughput-"))
    t = time.perf_counter()
    data = make_data(tmp / f"data{args.images}", args.images, workers=args.data_workers)
    data_s = time.perf_counter() - t
    ds = load_dataset(data)
    cache = tmp / f"cache{args.images}_{args.cache_size}"
    t = time.perf_counter()
    prepare(data, cache, args.cache_size, progress=False)
    prepare_s = time.perf_counter() - t
    cached = load_dataset(cache)
    idx = np.arange(len(ds))

    def fresh_model():
        torch.manual_seed(0)
        m = timm.create_model(args.model, num_classes=7).to(device).train()
        return m.to(memory_format=torch.channels_last) if gpu else m

    workers = args.workers if args.workers is not None else default_workers(len(ds) * 10)
    results = {
        "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "model": args.model,
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "images": len(ds),
        "workers": workers,
        "data_seconds": data_s,
        "prepare_seconds": prepare_s,
    }

    # (a) reference recipe
    ref_tf = T.Compose([T.Resize((args.size, args.size)), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    class Ref(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            from PIL import Image

            with Image.open(ds.meta["path"].iat[i]) as im:
                return ref_tf(im.convert("RGB")), int(ds.meta["label"].iat[i])

    loader = torch.utils.data.DataLoader(Ref(), batch_size=4, shuffle=True, num_workers=0)
    results["a_reference"] = _timed(loader, _step_fn(fresh_model(), device, False, False), args.ref_steps, args.warmup, device)

    prep = resolve_preprocess(args.model, input_size=args.size, source_size=args.cache_size)

    def sampler():
        # one iterator for all steps: a small dataset would otherwise end its epoch every few batches and drain the
        # workers (the first GPU run measured that stall, not the pipeline)
        return torch.utils.data.RandomSampler(idx, replacement=True, num_samples=(args.steps + args.warmup + 2) * args.batch)

    variants = {
        # (b) raw JPEGs: workers decode to the source size, the device augments
        "b_raw_jpeg": lambda: PixelSet(ds, idx, prep),
        # (c) the cache, device augmentation (resident on a GPU when it fits)
        "c_cache": lambda: PixelSet(cached, idx, prep, resident=gpu),
        # (c') the cache, per-sample augmentation on the workers
        "c_cache_workers": lambda: ImageSet(cached, idx, prep.train_transform(), preload=False),
    }
    for key, make in variants.items():
        dset = make()
        on_device = isinstance(dset, PixelSet)
        nothing_to_decode = on_device and dset.store is not None and (dset.resident or not gpu)
        n_workers = 0 if nothing_to_decode else workers  # as training's default: indexing needs no workers
        loader = make_loader(dset, args.batch, sampler=sampler(), num_workers=n_workers, pin_memory=gpu, drop_last=True)
        if key == "c_cache":
            results["c_cache_loader"] = "resident on the GPU" if dset.resident else f"uint8 batches, {n_workers} workers"
        feed = _OnDevice(loader, device) if on_device else loader
        results[key] = _timed(feed, _step_fn(fresh_model(), device, gpu, gpu), args.steps, args.warmup, device)
        del loader, feed, dset

    results.update(_augment_cost(cached, idx, prep, device, args.batch, min(len(idx), args.aug_images)))

    # (d) compute only
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 7, (args.batch,), device=device)
    results["d_compute_only"] = _timed([(x, y)] * 2, _step_fn(fresh_model(), device, gpu, gpu), args.steps, args.warmup, device)
    results["c_over_d"] = results["c_cache"] / results["d_compute_only"]
    results["c_over_a"] = results["c_cache"] / results["a_reference"]
    results["c_over_c_workers"] = results["c_cache"] / results["c_cache_workers"]
    results.update(_decode_cost(ds, sorted({args.cache_size, args.size}), gpu, n=min(32, len(ds))))
    return results


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--cache-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=None, help="default 256 on GPU, 32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 50 GPU, 5 CPU)")
    ap.add_argument("--ref-steps", type=int, default=None, help="timed steps for (a) (default 100 GPU, 10 CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--images", type=int, default=None, help="synthetic 600x450 JPEGs (default 2000 GPU, 240 CPU)")
    ap.add_argument("--aug-images", type=int, default=None, help="images for the augmentation-cost comparison")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--data-workers", type=int, default=None, help="processes drawing the synthetic images")
    ap.add_argument("--workdir", default=None, help="keep the data and cache here (reused by the next run)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny and quick, for the test suite")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--make-data", default=None, metavar="DIR", help="only write --images synthetic JPEGs into DIR")
    args = ap.parse_args(argv)
    if args.make_data:
        t = time.perf_counter()
        make_data(args.make_data, args.images or 7000, workers=args.data_workers)
        print(f"{args.make_data}: {args.images or 7000} synthetic {SIZES[0]}x{SIZES[1]} JPEGs in {time.perf_counter() - t:.0f} s")
        return {}
    import torch

    gpu = torch.cuda.is_available() and not args.cpu
    if args.smoke:
        args.model, args.size, args.cache_size = "resnet18", 64, 72
        defaults = dict(batch=4, steps=2, ref_steps=2, warmup=1, images=16, workers=0, aug_images=8, data_workers=1)
    elif gpu:
        defaults = dict(batch=256, steps=50, ref_steps=100, warmup=10, images=2000, aug_images=256)
    else:
        defaults = dict(batch=32, steps=5, ref_steps=10, warmup=2, images=240, aug_images=64)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    r = run(args)
    print(
        f"device: {r['device']}, model {r['model']} at {r['size']} px, batch {r['batch']}, {r['images']} images, "
        f"{r['workers']} workers; data {r['data_seconds']:.0f} s, prepare {r['prepare_seconds']:.1f} s"
    )
    names = {
        "a_reference": "(a)  reference recipe",
        "b_raw_jpeg": "(b)  raw JPEGs, device augmentation",
        "c_cache": f"(c)  cache, device augmentation ({r['c_cache_loader']})",
        "c_cache_workers": "(c') cache, per-sample augmentation on workers",
        "d_compute_only": "(d)  compute only",
    }
    for k, name in names.items():
        print(f"  {name:<66} {r[k]:9.1f} images/s")
    print(f"  (c)/(d) = {r['c_over_d']:.2f}   (c)/(a) = {r['c_over_a']:.1f}x   (c)/(c') = {r['c_over_c_workers']:.2f}x")
    print(
        f"  augmentation alone, {r['aug_images']} images: per-sample {r['aug_ms_per_sample']:.2f} ms/image (one core), batched on "
        f"{r['device'].split(' (')[0]} {r['aug_ms_batched']:.3f} ms/image: {r['aug_per_sample_over_batched']:.1f}x cheaper"
    )
    if "aug_ms_batched_1thread" in r:
        print(
            f"  batched on one core: {r['aug_ms_batched_1thread']:.3f} ms/image: {r['aug_per_sample_over_batched_1thread']:.1f}x cheaper per core"
        )
    for k, v in r.items():
        if k.startswith("decode_"):
            print(
                f"  JPEG to {k[7:]} px: Pillow {v['full_ms']:.2f} ms/image, with draft ({v['draft_scale']}) {v['draft_ms']:.2f} ms "
                f"(pixels {v['draft_mean_abs_levels']:.2f} levels apart on average, {v['draft_max_levels']} at most)"
            )
    if "nvjpeg_images_per_s" in r:
        print(f"  nvJPEG on the GPU: {r['nvjpeg_images_per_s']:.0f} images/s (decode only)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
