"""The model card, generated from a bundle (``skinlesion card MODEL --out MODEL_CARD.md``).

Every number comes from the bundle itself: its config (recipe, members, calibration, rules,
stored benchmark results) and, for a cross-validated ensemble, its stored out-of-fold logits,
from which the OOF metrics are recomputed here with the bundle's own calibration and rules.
So the card's prose and numbers cannot drift from the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


NOTICE = "**Research and education only. Not a medical device; its output is not a diagnosis.**"


def oof_probabilities(cfg, aux: dict) -> np.ndarray:
    """The OOF probabilities through the bundle's own calibration and fusion, from its stored OOF logits."""
    from .posthoc import apply_metadata, calibrate

    probs = calibrate(np.asarray(aux["oof.logits"], np.float64), cfg.temperature, cfg.class_bias)
    if cfg.metadata and "meta.coef" in aux:
        probs = apply_metadata(np.log(np.clip(probs, 1e-12, None)), np.asarray(aux["oof.meta"], np.float64), aux)
    return probs


def oof_metrics(cfg, aux: dict) -> dict | None:
    """The OOF metrics recomputed from the bundle's stored OOF logits (None for a bundle without them)."""
    if "oof.logits" not in aux:
        return None
    from .evaluate import analysis_metrics
    from .metrics import class_calibration, compute_metrics
    from .posthoc import calibrate, decide

    logits = np.asarray(aux["oof.logits"], np.float64)
    labels = np.asarray(aux["oof.labels"]).astype(int)
    probs = oof_probabilities(cfg, aux)
    m = compute_metrics(probs, labels, decide(probs, cfg.decision), cfg.labels)
    m.update(analysis_metrics(probs, labels, cfg, aux))
    m["class_calibration_uncalibrated"] = class_calibration(calibrate(logits), labels, cfg.labels)
    return m


def _f(x, nd=4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def skin_tone_lines(cfg) -> list[str]:
    """The training images' ITA band counts and range (:mod:`skinlesion.skintone`), as the card and ``info`` show them."""
    from .skintone import distribution_lines

    return distribution_lines((cfg.metrics or {}).get("skin_tone"))


def is_model(arg: str | Path) -> bool:
    """Whether ``skinlesion info ARG`` names a model (``default``, ``hf://``, a .safetensors bundle or a run/Hub
    folder holding one) rather than a dataset."""
    s = str(arg)
    if s == "default" or s.startswith("hf://"):
        return True
    p = Path(arg).expanduser()
    if p.is_file():
        return p.suffix.lower() == ".safetensors" and p.with_suffix(".json").exists()
    return p.is_dir() and any((p / n).exists() for n in ("model.safetensors", "best.safetensors", "last.safetensors"))


def model_info(model: str | Path) -> str:
    """What ``skinlesion info MODEL`` says about a model bundle: its name, networks, classes, and the skin tone
    of its training images."""
    from .bundle import load_config, resolve_model_path

    path = resolve_model_path(model)
    cfg = load_config(path, check_backbones=False)
    lines = [
        f"{cfg.name} ({path})",
        f"{len(cfg.members)} member network(s): {', '.join(sorted({m.backbone for m in cfg.members}))}",
        f"classes: {', '.join(cfg.labels.codes)}",
        "",
    ]
    return "\n".join(lines + skin_tone_lines(cfg))


def render(model: str | Path) -> str:
    """The model card of ``model`` as Markdown."""
    from .bundle import load_config, read_tensors, resolve_model_path
    from .evaluate import analysis_lines, metric_lines, subgroup_lines

    path = resolve_model_path(model)
    cfg = load_config(path, check_backbones=False)
    aux = {k: v for k, v in read_tensors(path).items() if not k.startswith("members.")}
    prep = cfg.prep
    tr = cfg.train or {}
    m = oof_metrics(cfg, aux)
    cv = m is not None
    lines = [
        f"# Model card: {cfg.name}",
        "",
        "Generated from the model bundle by `skinlesion card` (do not edit by hand: regenerate it).",
        "",
        NOTICE,
        "",
        "## What it is",
        "",
    ]
    backbones = ", ".join(sorted({mm.backbone for mm in cfg.members}))
    lines += [
        f"- {len(cfg.members)} member network(s): {backbones}"
        + (f", one per lesion-grouped fold of a {len(cfg.members)}-fold cross-validation" if cv else "")
        + f"; initial weights: {cfg.members[0].pretrained}.",
        f"- Prediction averages the members' probabilities (`{cfg.combine}`)"
        + (", over the 8 flips/rotations too (test-time augmentation, kept because it lowered the held-out NLL)" if cfg.tta else "")
        + ".",
        f"- Input: {'the central square of the image, ' if prep.crop == 'center' else ''}"
        + (
            f"reduced to {prep.source_size}x{prep.source_size} px"
            + (f" and JPEG-encoded at quality {prep.source_jpeg_quality}" if prep.source_jpeg_quality else "")
            + " (as the training images were made), then "
            if prep.source_size
            else ""
        )
        + f"resized to {prep.input_size}x{prep.input_size} px, normalised with mean {list(prep.mean)} / std {list(prep.std)}.",
        f"- Calibration: softmax(z / T + b), T = {cfg.temperature:.4f}"
        + (
            f", per-class bias b = [{', '.join(f'{b:+.3f}' for b in cfg.class_bias)}] (undoes the class-prior shift of the weighted loss)"
            if cfg.class_bias
            else ""
        )
        + ".",
        "- Patient data: "
        + (
            "age, sex and body site are fused with the image (multinomial logistic regression on the calibrated image "
            "log-probabilities and the encoded metadata, trained with metadata dropout; any field may be missing)."
            if cfg.metadata
            else "not used (image only)."
        ),
    ]
    if cfg.ood:
        radii = cfg.ood.get("round_field_radii") or []
        photometric = cfg.ood.get("photometric") or []
        variants = ([f"a round dermatoscope field (radius {min(radii):.2f}-{max(radii):.2f}, as in training)"] if radii else []) + (
            ["an exposure or contrast change of the robustness benchmark up to severity 3"] if photometric else []
        )
        fields = (
            f", each both plain and under one of: {'; '.join(variants)} (black corners, a darker or a washed-out photo alone are "
            "not out of distribution; the photo-quality check names them)"
            if variants
            else ""
        )
        lines.append(
            f"- Out-of-distribution score: Mahalanobis distance of the first member's pooled stage features to one Gaussian per "
            f"stage (Ledoit-Wolf), fitted on its training images{fields}; each stage's distance over its own held-out "
            f"{cfg.ood.get('percentile', 97.5)}th percentile, and the score is the {'mean' if cfg.ood.get('aggregate') == 'mean' else 'largest'} "
            f"of those ratios; flagged above {cfg.ood['threshold']:.3f}, the "
            f"{cfg.ood.get('percentile', 97.5)}th percentile of its held-out images"
            + (
                f"; an image with almost no colour (mean chroma below {cfg.ood['min_chroma']:.4f}, a quarter of the least colourful "
                "training image's) is flagged too"
                if cfg.ood.get("min_chroma")
                else ""
            )
            + ". A flagged image is referred."
        )
    if cfg.quality:
        q = cfg.quality
        lines.append(
            "- Photo quality: "
            + ", ".join(p.replace("_", " ") for p in q["problems"])
            + " are each named with advice to retake (the analysis is still shown), by a logistic score on the image's exposure, "
            "contrast, sharpness and lesion-geometry statistics"
            + (" and the first member's pooled stage features" if q.get("uses_network_features") else "")
            + f", trained on its training images against their corruptions (severities {', '.join(map(str, q['fit_severities']))}); "
            f"each threshold flags {q['target_false_alarm']:.1%} of clean held-out images "
            f"(any problem, measured on other held-out images: {q['any_false_alarm_held_out']:.1%})."
        )
    if cfg.decision:
        bal = cfg.decision["rules"].get("balanced")
        lines.append(
            f"- Decision rule: the named class is the `{cfg.rule}` one"
            + (
                f"; `balanced` (argmax of p / prior^{bal['alpha']:.2f}, the exponent with the best balanced accuracy on "
                f"{cfg.decision['fitted_on']} predictions) is stored too (`skinlesion predict --rule balanced`)"
                if bal and cfg.rule != "balanced"
                else ""
            )
            + ". The probabilities, the tier and the prediction sets do not depend on it."
        )
    if cfg.refer:
        lines.append(
            f"- Refer when unsure: top-class confidence below {cfg.refer['confidence_threshold']:.3f} "
            f"(chosen on {cfg.refer['fitted_on']} predictions for {cfg.refer['target_coverage']:.0%} coverage)."
        )
    if cfg.conformal:
        lines.append(
            f"- Prediction sets: {cfg.conformal['library']}, {cfg.conformal['method']}, {cfg.conformal['confidence']:.0%} "
            f"confidence, calibrated on {cfg.conformal['n_calibration']} {cfg.conformal['fitted_on']} predictions."
        )
    if cfg.tier:
        lines.append(
            f'- Triage tier: "see a dermatologist soon" whenever the malignant/pre-malignant probability '
            f"({' + '.join(cfg.labels.malignant)}) is at least {cfg.tier['malignant_threshold']:.3f} (chosen for "
            f"{cfg.tier['target_sensitivity']:.0%} sensitivity on {cfg.tier['fitted_on']} predictions), unsure or not; "
            '"unsure: refer" when referred, "routine" otherwise. The malignant summary is always stated against that threshold.'
        )
    v = cfg.created_with or {}
    lines += [f"- Made with skinlesion {v.get('skinlesion')}, torch {v.get('torch')}, timm {v.get('timm')}, Python {v.get('python')}.", ""]

    ham = cfg.labels.name == "ham10000"
    lines += [
        "## Data and license",
        "",
        (
            "HAM10000 (Tschandl, Rosendahl & Kittler, Sci Data 5:180161, 2018)"
            if ham
            else f"`{tr.get('data', 'not recorded')}` ({cfg.labels.name} label set: {', '.join(cfg.labels.codes)})"
        )
        + (
            f" as the {prep.source_size}x{prep.source_size} DermaMNIST images (Yang et al., MedMNIST v2, Sci Data 10:41, 2023)"
            if ham and prep.source_size
            else ""
        )
        + (
            f": all {m['n_images']} labelled images{' (DermaMNIST train + val)' if ham and prep.source_size == 28 else ''}, split into {len(cfg.members)} lesion-grouped, "
            "class-stratified folds (no lesion in two folds). Each member trained on the other folds and selected its epoch "
            "on its own fold." + (" The official DermaMNIST test split was never used." if ham else "")
            if cv
            else "."
        ),
        "The data is CC BY-NC-SA 4.0 and so are these weights: non-commercial use, share alike."
        if ham
        else "These weights inherit the license of the images they were trained on (the ISIC Archive's are per image).",
        "",
    ]
    if tr:
        keys = (
            "backbone",
            "pretrained",
            "input_size",
            "epochs",
            "patience",
            "batch_size",
            "lr",
            "weight_decay",
            "balance",
            "label_smoothing",
            "seed",
            "folds",
        )
        lines += [
            "## Training",
            "",
            "Recipe (the resolved config; rerun it with the command in benchmarks/RESULTS.md):",
            "",
            "| setting | value |",
            "| --- | --- |",
        ]
        lines += [f"| {k} | {tr[k]} |" for k in keys if k in tr]
        lines += [
            "",
            f"Augmentation: random resized crop (scale {list(prep.scale)}), flips, 90-degree rotations, brightness "
            f"±{prep.brightness:.0%}, contrast ±{prep.contrast:.0%}, saturation ±{prep.jitter:.0%}, a black round dermatoscope "
            f"field with probability {prep.vignette:.0%}.",
            "",
        ]
        if cv:
            lines += [
                "| member | fold | held-out accuracy | held-out balanced accuracy | held-out macro AUC | epoch |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for i, mm in enumerate(cfg.members):
                mt = mm.metrics or {}
                lines.append(
                    f"| {i} | {mm.fold} | {_f(mt.get('val_accuracy'))} | {_f(mt.get('val_balanced_accuracy'))} | "
                    f"{_f(mt.get('val_auc_macro'))} | {mt.get('epoch', 'n/a')} |"
                )
            lines.append("")

    if cv:
        lines += [
            "## Out-of-fold metrics",
            "",
            f"Every one of the {m['n_images']} images predicted by the member that never saw it, through the shipped "
            "calibration and rules (recomputed from the OOF logits stored in the bundle; the test suite checks them). "
            "These are leak-free, unlike the official DermaMNIST val split (348 of 1,003 images have a sibling in train). "
            "A single member's prediction is weaker than the whole ensemble's, so they are slightly pessimistic.",
            "",
        ]
        lines += metric_lines(m, ("accuracy", "balanced_accuracy", "auc_macro", "f1_weighted", "f1_macro", "malignant_auc", "ece", "nll"))
        lines += [
            "",
            "Before the class-prior correction (temperature 1, no bias), mean predicted probability vs actual share:",
            "",
            "| class | mean predicted | actual share |",
            "| --- | --- | --- |",
        ]
        for c, r in m["class_calibration_uncalibrated"].items():
            lines.append(f"| {c} | {r['mean_predicted']:.4f} | {r['actual_share']:.4f} |")
        lines += analysis_lines(m)
        cross = (cfg.metrics or {}).get("cross_fitted")
        if cross:
            lines += [
                "",
                "Cross-fitted (the calibration, fusion and rules fitted on the other folds only, then applied to each fold): "
                f"accuracy {_f(cross.get('accuracy'))}, balanced accuracy {_f(cross.get('balanced_accuracy'))}, macro AUC "
                f"{_f(cross.get('auc_macro'))}; conformal coverage {_f(cross['conformal']['coverage'])} with mean set size "
                f"{cross['conformal']['mean_size']:.2f}"
                + (
                    f"; refer rate {cross['refer']['rate']:.1%}, accuracy on the rest {_f(cross['refer']['accuracy_kept'])}"
                    if "refer" in cross
                    else ""
                )
                + ".",
            ]
        ab = (cfg.metrics or {}).get("metadata_ablation")
        if ab:
            lines += [
                "",
                "## Patient data: ablation (cross-fitted on OOF)",
                "",
                "| input | accuracy | balanced accuracy | macro AUC | NLL | " + " | ".join(f"recall {c}" for c in cfg.labels.codes) + " |",
                "| --- " * (5 + len(cfg.labels)) + "|",
            ]
            for name in ("image", "image+metadata"):
                r = ab[name]
                lines.append(
                    f"| {name} | {r['accuracy']:.4f} | {r['balanced_accuracy']:.4f} | {r['auc_macro']:.4f} | {r['nll']:.4f} | "
                    + " | ".join(f"{r['recall'][c]:.3f}" for c in cfg.labels.codes)
                    + " |"
                )
            lines += [
                "",
                "Shipped with patient data: " + ("yes (it helped out of fold)." if cfg.metadata else "no (it did not help out of fold)."),
            ]
    else:
        lines += ["## Validation metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_f(v) if isinstance(v, float) else v} |" for k, v in (cfg.metrics or {}).items() if not isinstance(v, dict)]
    lines += ["", "## Skin tone (ITA)", ""] + skin_tone_lines(cfg)
    lines += [
        "",
        "The ITA is measured on dermoscopic photos, whose lighting and colour balance move it: it is a proxy for skin "
        "tone, not a Fitzpatrick type. The accuracy per band is in the subgroup tables below.",
    ]
    sub = (cfg.metrics or {}).get("subgroups")
    if sub:
        lines += ["", "## Subgroups (out of fold)", ""]
        lines += subgroup_lines(sub)[1:]
    rob = (cfg.metrics or {}).get("robustness")
    if rob:
        lines += [
            "",
            "## Robustness",
            "",
            f"`{rob['command']}`: balanced accuracy, macro AUC and melanoma recall under corruptions "
            f"of the {rob['images']} images of fold {rob.get('fold', 0)} (each predicted by the member that never saw it), "
            "severity 1-5 (3 is middle).",
            "",
            "| corruption | severity | balanced accuracy | macro AUC | melanoma recall | flagged OOD | quality names it | quality names any |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]

        def pct(v):
            return "" if v is None or v != v else f"{v:.1%}"

        for r in rob["rows"]:
            lines.append(
                f"| {r['corruption']} | {r['severity']} | {r['balanced_accuracy']:.3f} | {r['auc_macro']:.3f} | {r['mel_recall']:.3f} | "
                f"{r['ood_flagged']:.1%} | {pct(r.get('quality_named'))} | {pct(r.get('quality_any'))} |"
            )
        if rob.get("photos"):
            lines += [
                "",
                f"Non-dermoscopic photos (scikit-image's pictures and crops of them): {rob['photos']['flagged']:.1%} of "
                f"{rob['photos']['images']} flagged as out of distribution.",
            ]
    lines += [
        "",
        "## Intended use",
        "",
        "Research and education: exploring dermoscopy classification, calibration, selective prediction and failure modes; "
        "teaching. Not for diagnosis, triage or any clinical decision.",
        "",
        "## Known limits",
        "",
        f"- Trained on {prep.source_size or 'full-resolution'} px images: fine structure (pigment networks, vessels) is lost; "
        "full-resolution uploads are reduced the same way first, on purpose, to match the training data.",
        "- HAM10000 comes mostly from fair-skinned patients in Austria and Australia; performance on darker skin is unknown "
        "and likely worse."
        if ham
        else "- Performance on skin types and centres the training data under-represents is unknown and likely worse.",
        "- Dermoscopic images only: clinical photos, phone pictures and anything else are out of distribution; the OOD score "
        "catches many such images, not all.",
        f"- {len(cfg.labels)} classes only ({', '.join(cfg.labels.codes)}): a lesion outside them is forced into one of them.",
        "- Class imbalance: nv is two thirds of the data; df and vasc have about 100 images each, so their numbers are uncertain."
        if ham
        else "- Class imbalance: the rare classes' numbers are uncertain (their image counts are in the per-class table).",
        "- The conformal guarantee is marginal (over images like the calibration set), not per class and not under distribution shift.",
    ]
    if rob:  # what the robustness table says the OOD score gets wrong
        mid = {r["corruption"]: r for r in rob["rows"] if r["severity"] == 3}
        clean = next(r for r in rob["rows"] if r["corruption"] == "none")
        over = [c for c, r in mid.items() if r["ood_flagged"] > 0.5 and clean["balanced_accuracy"] - r["balanced_accuracy"] < 0.05]
        under = [c for c, r in mid.items() if r["ood_flagged"] < 0.2 and clean["balanced_accuracy"] - r["balanced_accuracy"] >= 0.05]
        if over:
            lines.append(
                f"- The out-of-distribution score flags images the model still handles ({', '.join(over).replace('_', ' ')} at "
                "middle severity): such a dermoscopic image may be refused as out of distribution."
            )
        if under:
            lines.append(f"- It misses corruptions that do hurt the model ({', '.join(under).replace('_', ' ')} at middle severity).")
    lines += [""]
    lines += ["## The diagnoses", "", "| code | diagnosis | malignant or pre-malignant |", "| --- | --- | --- |"]
    lines += [f"| {d.code} | {d.name} | {'yes' if d.malignant else 'no'} |" for d in cfg.labels.diagnoses]
    return "\n".join(lines) + "\n"


def write_card(model: str | Path, out: str | Path) -> Path:
    from .errors import atomic_text

    return atomic_text(Path(out), render(model))
