"""The post-training fits of one run, timed, and what the fitted checks then do on the run's test images.

    python benchmarks/finish_time.py RUN [--data ../shared/data/dermamnist28] [--json F]

RUN is a ``skinlesion train --split`` folder (``best.safetensors``, ``split.csv``). The run is copied
to a temporary folder and :func:`skinlesion.finish.finish_run` (TTA choice, calibration, rules, OOD
score, photo-quality check) is run on the copy, timed and with the peak resident memory of the
process (torch and timm imported first, as the training loop that runs the fits has them). Then,
on the split's ``test`` rows (never seen by the fits), it states what the checks do: the share of
clean images flagged out of distribution and with any photo problem, and per problem the share
named at severity 3 of its corruption. Run it with ``PYTHONPATH=<checkout>/src`` of two
checkouts to compare the code before and after a change on the same run, side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "dermamnist28"))
    ap.add_argument("--test-images", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import skinlesion
    from skinlesion.corruptions import corrupt
    from skinlesion.data import load_dataset
    from skinlesion.data.split import read_manifest
    from skinlesion.finish import finish_run
    from skinlesion.predict import Predictor
    from skinlesion.quality import PROBLEMS

    run = Path(args.run)
    ds = load_dataset(args.data)
    manifest = read_manifest(run / "split.csv")
    where = {k: i for i, k in enumerate(ds.meta["image_id"])}
    pos = {s: np.array([where[i] for i in manifest.loc[manifest["split"] == s, "image_id"]]) for s in ("train", "val", "test")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "run"
        shutil.copytree(run, work, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "logs"))
        import timm  # noqa: F401  (loaded by the training loop before its fits run: not theirs to pay)
        import torch  # noqa: F401

        t0 = time.perf_counter()
        finish_run(work, ds, pos["train"], pos["val"])
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        p = Predictor(str(work / "best.safetensors"))
        some = np.random.default_rng(0).choice(pos["test"], min(args.test_images, len(pos["test"])), replace=False)
        clean = [p.prep.to_source(ds.image(int(i))) for i in some]

        def named(images):
            return p.predict_images(images, [str(i) for i in range(len(images))])

        base = named(clean)
        checks = {
            "ood_flagged_clean": float(np.mean([bool(r.ood_reasons) for r in base])),
            "any_quality_problem_clean": float(np.mean([bool(r.quality) for r in base])),
        }
        for problem, (_, _, corruption) in PROBLEMS.items():
            preds = named(corrupt(clean, corruption, 3, seed=1))
            checks[f"{problem}_named_at_severity_3"] = float(np.mean([problem in r.quality for r in preds]))
        ood_cfg = json.loads((work / "best.json").read_text()).get("ood") or {}
    result = {
        "code": str(Path(skinlesion.__file__).parents[1]),
        "run": str(run),
        "finish_seconds": round(seconds, 1),
        "peak_rss_mib": round(peak),
        "ood_n_train": ood_cfg.get("n_train"),
        **{k: round(v, 3) for k, v in checks.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
