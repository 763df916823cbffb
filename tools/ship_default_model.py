"""Train (or take) the default model, store it in the package, and write MODEL_CARD.md.

Reproduces the shipped model with the project's own CLI:

    python tools/ship_default_model.py                      # split, train, ship, evaluate, write the card
    python tools/ship_default_model.py --run runs/default   # ship an already finished run

The card's val numbers come from `skinlesion evaluate --model default` on the official
DermaMNIST val subset, run on the shipped (fp16) files themselves.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "dermamnist28"
RECIPE = ["--backbone", "tf_efficientnet_lite0", "--pretrained", "--epochs", "12",
          "--patience", "5", "--batch-size", "64", "--lr", "1e-3", "--weight-decay", "0.02", "--num-workers", "1"]


def recipe(t: dict) -> str:
    """The `skinlesion train` options that reproduce a run, from its resolved config."""
    return (f"--backbone {t['backbone']}{' --pretrained' if t['pretrained'] else ''} --input-size {t['input_size']} "
            f"--epochs {t['epochs']} --patience {t['patience']} --batch-size {t['batch_size']} --lr {t['lr']} "
            f"--weight-decay {t['weight_decay']} --balance {t['balance']} --seed {t['seed']}")


def sh(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--run", default=None, help="a finished run directory to ship instead of training")
    ap.add_argument("--out", default="runs/default")
    ap.add_argument("--input-size", default="64", help="network input size for the 28 px images")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "skinlesion.cli"]
    run = Path(args.run or args.out)
    if args.run is None:
        run.mkdir(parents=True, exist_ok=True)
        sh(*cli, "split", args.data, "--kind", "official", "--out", str(run.parent / "official_split.csv"))
        sh(*cli, "train", args.data, "--split", str(run.parent / "official_split.csv"), "--out", str(run), "--no-progress",
           "--input-size", args.input_size, *RECIPE)
    from skinlesion.train import copy_model

    dest = REPO / "src" / "skinlesion" / "weights" / "default"
    path = copy_model(run, dest, half=True)
    print(f"shipped {path} ({path.stat().st_size / 1e6:.1f} MB)")
    ev = run / "eval_default_val"
    sh(*cli, "evaluate", "--model", "default", "--data", args.data, "--subset", "val", "--out", str(ev))
    m = json.loads((ev / "metrics.json").read_text())
    cfg = json.loads(dest.with_suffix(".json").read_text())
    # the metrics the app's sidebar shows: those of the shipped (fp16) files, as in the card
    cfg["metrics"].update({k: m[k] for k in ("accuracy", "balanced_accuracy", "auc_macro", "ece", "ece_uncalibrated")})
    dest.with_suffix(".json").write_text(json.dumps(cfg, indent=2))
    write_card(m, cfg, run, path)


def write_card(m: dict, cfg: dict, run: Path, path: Path) -> None:
    rows = "\n".join(f"| {k} | {m[k]:.4f} |" for k in (
        "accuracy", "balanced_accuracy", "auc_macro", "f1_weighted", "f1_macro", "malignant_auc", "ece", "ece_uncalibrated", "nll"))
    sens = "\n".join(f"| malignant sensitivity at {s} % specificity | {v:.4f} |"
                     for s, v in m["malignant_sensitivity_at_specificity"].items())
    per = "\n".join(f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['specificity']:.3f} | {r['f1']:.3f} | {r['auc']:.3f} | {r['support']} |"
                    for c, r in m["per_class"].items())
    t = cfg["train"]
    card = f"""# Model card: skinlesion default model

The model that `skinlesion predict default`, `skinlesion evaluate --model default` and the
web app use. Files: `src/skinlesion/weights/default.safetensors` (fp16 weights plus the
out-of-distribution score's tensors, {path.stat().st_size / 1e6:.1f} MB) and `default.json`
(backbone, classes, preprocessing, temperature, OOD threshold, training config).

**Research and education only. Not a medical device; its output is not a diagnosis.**

## What it is

- Backbone: `{cfg['backbone']}` (timm), initialised from ImageNet weights ({cfg['pretrained']}).
- Input: the image is resized to {cfg['preprocess']['source_size']}x{cfg['preprocess']['source_size']} (as DermaMNIST made
  its images from the 600x450 originals), then upsampled to {cfg['preprocess']['input_size']}x{cfg['preprocess']['input_size']}
  (`low_res: {cfg['low_res']}`), normalised with mean {cfg['preprocess']['mean']} / std {cfg['preprocess']['std']}.
- Output: calibrated probabilities for akiec, bcc, bkl, df, mel, nv, vasc (temperature
  {cfg['temperature']:.4f}, fitted on val), and a malignant/pre-malignant probability (akiec + bcc + mel).
- Test-time augmentation: {"on: predictions average the 8 flips/rotations (log of the mean probability), because that raised val balanced accuracy; `--no-tta` turns it off" if cfg.get('tta') else "off (it did not raise val balanced accuracy)"}.
- Out-of-distribution warning: Mahalanobis distance of the pooled features to the nearest
  class mean (shared Ledoit-Wolf covariance, fitted on train), threshold at the
  {cfg['ood']['percentile']} th percentile of val ({cfg['ood']['threshold']:.1f}).

## Data and license

HAM10000 (Tschandl, Rosendahl & Kittler, Sci Data 5:180161, 2018) as the 28x28
DermaMNIST images (Yang et al., MedMNIST v2, Sci Data 10:41, 2023): the official
DermaMNIST train split (7,007 images) for training, the official val split (1,003
images) for model selection, the temperature and the OOD threshold. Nothing else was
tuned; the official test split was never used. The data is CC BY-NC-SA 4.0 and so are
these weights: non-commercial use, share alike.

## Training

`python tools/ship_default_model.py` (the project's own CLI: `skinlesion split --kind official`,
`skinlesion train DATA --split official_split.csv --out RUN {recipe(t)}`), on CPU. Resolved config:
{t['epochs']} epochs max, batch {t['batch_size']}, AdamW lr {t['lr']} (warm-up then cosine), weight decay
{t['weight_decay']}, label smoothing {t['label_smoothing']}, class balance `{t['balance']}`
(inverse-square-root-frequency loss weights), augmentation: random resized crop, flips,
90-degree rotations, colour jitter; selection on val balanced accuracy.

## Validation metrics (official DermaMNIST val, {m['n_images']} images)

Reproduce: `skinlesion evaluate --model default --data ../shared/data/dermamnist28 --subset val --out eval`
(the test suite checks these numbers to 3 decimals).

| metric | value |
| --- | --- |
{rows}
{sens}

| class | precision | recall | specificity | F1 | AUC | support |
| --- | --- | --- | --- | --- | --- | --- |
{per}

These val numbers are optimistic: the official DermaMNIST split is image-level, and 348
of the 1,003 val images have an image of the same lesion in train. Published results on
the official *test* split at 28x28, for orientation: MedMNIST v2 ResNet-18 ACC 0.735 /
AUC 0.917; Google AutoML Vision 0.768 / 0.914; MedMNIST+ best at 28 px ACC 0.766.

## Intended use

Research and education: exploring dermoscopy classification, calibration and failure
modes; teaching. Not for diagnosis, triage or any clinical decision.

## Known limits

- Trained on 28x28 images: fine structure (pigment networks, vessels) is lost; full-resolution
  uploads are reduced to 28x28 first, on purpose, to match the training data.
- HAM10000 comes mostly from fair-skinned patients in Austria and Australia; performance on
  darker skin is unknown and likely worse.
- Dermoscopic images only: clinical (non-dermoscopic) photos, phone pictures and anything
  else are out of distribution; the OOD warning catches many such images, not all.
- Seven classes only: lesions outside them (e.g. squamous cell carcinoma beyond akiec,
  Merkel cell carcinoma) are forced into one of the seven.
- Class imbalance: nv is 67 % of the data; df and vasc have about 100 images each, and their
  per-class numbers above are uncertain.
"""
    (REPO / "MODEL_CARD.md").write_text(card)
    print("wrote MODEL_CARD.md")


if __name__ == "__main__":
    main()
