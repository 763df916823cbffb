"""The OOD score's two ways to combine the stages, side by side, on an ensemble's members.

    python benchmarks/ood_aggregate.py [--model default] [--members 0,1,2,3,4] [--data ../shared/data/dermamnist28]
    python benchmarks/ood_aggregate.py --model runs/mix --predictor    # the bundle's own fit, through the predictor

For each member, the score of :mod:`skinlesion.ood` is fitted as a bundle fits it
(:func:`skinlesion.ood.fit_for_model`: a seeded sample of the member's training folds, plain and
under one round field or exposure change each; thresholds on its held-out fold), once with the
stages' ratios combined by their largest (``max``, bundles before 2026-12) and once by their mean.
Printed per member and aggregate: each everyday photo's score over its threshold (skimage's test
photos, an RGB noise image: all should be > 1), the real full-resolution melanoma's (< 1), and
the share flagged of the held-out fold and of 400 random dataset images (seed 0, as
tests/test_predict.py draws them). No held-out fold is used for anything but thresholds.
With several members, also every member at once: the mean over members of each one's score over
its own threshold (what a fit over all members' features would give; not what a bundle ships).

``--predictor``: instead, the bundle's own fit as a user meets it, through :class:`skinlesion.predict.Predictor`
(PyTorch): the photos of tests/test_predict.py and tests/test_not_analysed.py, the full-resolution melanoma,
and the share of the same 400 random images flagged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo")


def photos() -> dict:
    from PIL import Image
    from skimage import data as skdata

    out = {}
    for name in PHOTOS:
        a = getattr(skdata, name)()
        out[name] = Image.fromarray(a[..., :3] if a.ndim == 3 else a).convert("RGB")
    out["noise"] = Image.fromarray(np.random.default_rng(0).integers(0, 256, (450, 600, 3), dtype=np.uint8))
    return out


def through_predictor(model: str, data: str) -> None:
    from PIL import Image

    from skinlesion.data import load_dataset
    from skinlesion.predict import Predictor

    p = Predictor(model, backend="torch")
    ph = {k: v for k, v in photos().items() if k in ("astronaut", "chelsea", "coffee", "rocket", "noise")}
    ph["full-res melanoma"] = Image.open(Path(data).parent / "fullres" / "ISIC_0024310.jpg").convert("RGB")
    th = p.ood[1]["threshold"]
    print(f"{model}: OOD aggregate {p.ood[1].get('aggregate', 'max')}, threshold {th:.3f}")
    for name, pred in zip(ph, p.predict_images(list(ph.values()), list(ph))):
        print(f"  {name}: score {pred.ood_score:.3f} = {pred.ood_score / th:.2f}x the threshold, flagged {pred.out_of_distribution}")
    ds = load_dataset(data)
    some = np.random.default_rng(0).choice(len(ds), 400, replace=False)
    preds = p.predict_images([ds.image(int(i)) for i in some], list(ds.meta["image_id"].iloc[some]))
    print(f"  400 random dataset images flagged: {np.mean([q.out_of_distribution for q in preds]):.3f}")


def compare(model: str, members: list[int], data: str) -> list[dict]:
    """Each member's score fitted with both aggregates: one row per (member, aggregate), printed as it goes."""
    import torch
    from PIL import Image

    from skinlesion.bundle import load_model
    from skinlesion.data import load_dataset
    from skinlesion.models import forward_with_features
    from skinlesion.ood import (
        FIELD_RADII,
        PHOTOMETRIC,
        dataset_features,
        features_with_fields,
        fit,
        sample_train,
        score,
        stage_dims,
        stages,
    )

    net, cfg, aux = load_model(model, with_extra=True)
    ds = load_dataset(data)
    folds = np.asarray(aux["oof.folds"]).astype(int)
    prep = cfg.prep
    ph = photos()
    full = Image.open(Path(data).parent / "fullres" / "ISIC_0024310.jpg").convert("RGB")
    some = np.random.default_rng(0).choice(len(ds), 400, replace=False)
    radii = FIELD_RADII if prep.vignette else ()
    photometric = PHOTOMETRIC if prep.brightness or prep.contrast else ()
    rows = []
    for i in members:
        member = net.members[i].eval()
        fold = cfg.members[i].fold
        names, dims = stages(member), stage_dims(member)
        tr, va = sample_train(np.flatnonzero(folds != fold)), np.flatnonzero(folds == fold)
        tf = features_with_fields(member, prep, ds, tr, names, radii, photometric)
        vf = features_with_fields(member, prep, ds, va, names, radii, photometric)
        with torch.inference_mode():
            pf = forward_with_features(member, torch.from_numpy(prep.batch(list(ph.values()) + [full])), names)[1].numpy()
        hf = dataset_features(member, prep, ds, some, names)
        for agg in ("max", "mean"):
            tensors, oc = fit(tf, vf, names, dims, aggregate=agg)
            m = score(pf, tensors, oc) / oc["threshold"]
            rnd = score(hf, tensors, oc) / oc["threshold"]
            rows.append(
                {
                    "member": i,
                    "aggregate": agg,
                    "photos": dict(zip(ph, m[:-1])),
                    "fullres": m[-1],
                    "val": float(np.mean(score(vf[: len(va)], tensors, oc) > oc["threshold"])),
                    "random400": float(np.mean(rnd > 1)),
                    "photo_ratios": m,
                    "random_ratios": rnd,
                }
            )
            r = rows[-1]
            low = min(r["photos"], key=r["photos"].get)
            print(
                f"member {i} {agg:>4}: photos flagged {sum(v > 1 for v in r['photos'].values())}/{len(ph)} "
                f"(lowest {low} {r['photos'][low]:.3f}; chelsea {r['photos']['chelsea']:.3f}, noise {r['photos']['noise']:.3f}), "
                f"full-res melanoma {r['fullres']:.3f}, held-out fold flagged {r['val']:.3f}, random 400 {r['random400']:.3f}",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--members", default="0,1,2,3,4")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "dermamnist28"))
    ap.add_argument("--predictor", action="store_true", help="the bundle's own fit, through the predictor")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    if args.predictor:
        return through_predictor(args.model, args.data)
    rows = compare(args.model, [int(x) for x in args.members.split(",")], args.data)
    ph = photos()
    print(
        "\n| aggregate | photos flagged (all members) | lowest photo score / threshold | held-out fold flagged (mean) | random 400 flagged (mean) |"
    )
    print("|---|---|---|---|---|")
    for agg in ("max", "mean"):
        rs = [r for r in rows if r["aggregate"] == agg]
        flagged = sum(v > 1 for r in rs for v in r["photos"].values())
        print(
            f"| {agg} | {flagged}/{len(ph) * len(rs)} | {min(min(r['photos'].values()) for r in rs):.3f} | "
            f"{np.mean([r['val'] for r in rs]):.3f} | {np.mean([r['random400'] for r in rs]):.3f} |"
        )
    if len({r["member"] for r in rows}) > 1:
        # every member at once: the mean over members of each one's score over its own threshold, flagged above 1
        # (the 400 random images are training images of all but one member each: their rate here is a lower bound)
        print("\nevery member together (mean of the members' score / threshold, flagged above 1):")
        for agg in ("max", "mean"):
            rs = [r for r in rows if r["aggregate"] == agg]
            ph_all = np.mean([r["photo_ratios"] for r in rs], axis=0)
            rnd = np.mean([r["random_ratios"] for r in rs], axis=0)
            low = int(np.argmin(ph_all[:-1]))
            print(
                f"  {agg:>4}: photos flagged {int((ph_all[:-1] > 1).sum())}/{len(ph)} (lowest {list(ph)[low]} {ph_all[low]:.3f}), "
                f"full-res melanoma {ph_all[-1]:.3f}, random 400 flagged {np.mean(rnd > 1):.3f} (95th percentile {np.percentile(rnd, 95):.3f})"
            )


if __name__ == "__main__":
    main()
