"""Training throughput on full-resolution HAM10000-shaped data: reference recipe vs this project.

Trains ResNet50 at 224 px for a fixed number of steps on a synthetic dataset of 600x450
JPEGs and reports images/s for

  (a) the reference recipe: batch 4, fp32, no DataLoader workers, Pillow resize on the fly;
  (b) this project's pipeline from the raw JPEGs (its augmentation, workers sized to the
      machine, pinned memory, persistent workers; bf16 autocast + channels_last on GPU);
  (c) the same pipeline from a prepared cache (`skinlesion prepare --size 256`);
  (d) compute only: tensors already on the device, the ceiling for (b) and (c);

all in one run, plus (c)/(d) and (c)/(a).

    python benchmarks/throughput.py                 # GPU if present, else CPU defaults
    python benchmarks/throughput.py --smoke         # a few steps on tiny data (runs in `make test`)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


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


def run(args) -> dict:
    import numpy as np
    import timm
    import torch
    from torchvision import transforms as T

    from skinlesion.data import load_dataset
    from skinlesion.data.loader import ImageSet, default_workers, make_loader
    from skinlesion.data.synthetic import write_synthetic
    from skinlesion.models import resolve_preprocess
    from skinlesion.data.prepare import prepare

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    gpu = device.type == "cuda"
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="skinlesion-throughput-"))
    data = tmp / "data"
    if not (data / "HAM10000_metadata.csv").exists():
        write_synthetic(data, n_lesions=args.lesions, layout="kaggle", size=(600, 450), seed=0)
    ds = load_dataset(data)
    cache = tmp / f"cache{args.cache_size}"
    t = time.perf_counter()
    prepare(data, cache, args.cache_size, progress=False)
    prepare_s = time.perf_counter() - t
    cached = load_dataset(cache)
    idx = np.arange(len(ds))

    def fresh_model():
        torch.manual_seed(0)
        m = timm.create_model(args.model, num_classes=7).to(device).train()
        return m.to(memory_format=torch.channels_last) if gpu else m

    results = {
        "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "model": args.model,
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "images": len(ds),
        "workers": args.workers if args.workers is not None else default_workers(len(ds) * 10),
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

    # (b) / (c) this project's pipeline
    workers = results["workers"]
    prep = resolve_preprocess(args.model, input_size=args.size, source_size=args.cache_size)
    for key, dset in (("b_raw_jpeg", ds), ("c_cache", cached)):
        # one iterator for all steps: a small dataset would otherwise end its epoch every few
        # batches and drain the workers (the first GPU run measured that stall, not the pipeline)
        sampler = torch.utils.data.RandomSampler(idx, replacement=True, num_samples=(args.steps + args.warmup + 2) * args.batch)
        loader = make_loader(
            ImageSet(dset, idx, prep.train_transform(), preload=False),
            args.batch,
            sampler=sampler,
            num_workers=workers,
            pin_memory=gpu,
            drop_last=True,
        )
        results[key] = _timed(loader, _step_fn(fresh_model(), device, gpu, gpu), args.steps, args.warmup, device)
        del loader

    # the CPU cost of one training image from the cache, in one process: workers / this is the
    # pipeline's ceiling in images/s, whatever the accelerator
    one = ImageSet(cached, idx, prep.train_transform(), preload=False)
    t = time.perf_counter()
    n_one = min(len(idx), 64)
    for i in range(n_one):
        one[i]
    results["cache_ms_per_image"] = 1e3 * (time.perf_counter() - t) / n_one
    results["cache_ceiling"] = max(workers, 1) * 1e3 / results["cache_ms_per_image"]

    # (d) compute only
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 7, (args.batch,), device=device)
    results["d_compute_only"] = _timed([(x, y)] * 2, _step_fn(fresh_model(), device, gpu, gpu), args.steps, args.warmup, device)
    results["c_over_d"] = results["c_cache"] / results["d_compute_only"]
    results["c_over_a"] = results["c_cache"] / results["a_reference"]
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
    ap.add_argument("--lesions", type=int, default=None, help="synthetic lesions (~1.5 images each)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny and quick, for the test suite")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available() and not args.cpu
    if args.smoke:
        args.model, args.size, args.cache_size = "resnet18", 64, 72
        defaults = dict(batch=4, steps=2, ref_steps=2, warmup=1, lesions=10, workers=0)
    elif gpu:
        defaults = dict(batch=256, steps=50, ref_steps=100, warmup=10, lesions=1400)
    else:
        defaults = dict(batch=32, steps=5, ref_steps=10, warmup=2, lesions=160)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    r = run(args)
    print(
        f"device: {r['device']}, model {r['model']} at {r['size']} px, batch {r['batch']}, {r['images']} images, "
        f"{r['workers']} workers; prepare took {r['prepare_seconds']:.1f} s"
    )
    for k in ("a_reference", "b_raw_jpeg", "c_cache", "d_compute_only"):
        print(f"  {k:<16} {r[k]:9.1f} images/s")
    print(f"  (c)/(d) = {r['c_over_d']:.2f}   (c)/(a) = {r['c_over_a']:.1f}x")
    print(
        f"  one cached image costs {r['cache_ms_per_image']:.2f} ms of CPU to augment: "
        f"{max(r['workers'], 1)} workers cap (c) near {r['cache_ceiling']:.0f} images/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
