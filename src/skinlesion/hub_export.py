"""Writing a bundle as a Hugging Face Hub folder (the layout is described in :mod:`skinlesion.hub`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import SkinLesionError
from .hub import DATASETS, HUB_KEY, LICENSE, TAGS


def timm_config(cfg) -> dict:
    """timm's config.json fields (``save_for_hf``) for a bundle config, plus the bundle's own under ``skinlesion``."""
    prep = cfg.prep
    size = int(prep.input_size)
    labels = list(cfg.labels.codes)
    return {
        "architecture": cfg.members[0].backbone,
        "num_classes": len(labels),
        "num_features": None,
        "global_pool": "avg",
        "label_names": labels,
        "label_descriptions": {c: d for c, d in zip(labels, _names(labels))},
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "mean": list(map(float, prep.mean)),
            "std": list(map(float, prep.std)),
            "crop_pct": 1.0,
            "crop_mode": prep.crop,
            "source_size": cfg.preprocess.get("source_size"),
            "interpolation": cfg.preprocess.get("interpolation", "bicubic"),
            "num_classes": len(labels),
            "license": LICENSE,
        },
        HUB_KEY: cfg.to_dict(),
    }


def _names(codes) -> list[str]:
    from . import classes

    out = []
    for c in codes:
        try:
            out.append(classes.get(c).name)
        except Exception:  # a custom label set's own code
            out.append(c)
    return out


def card_data(cfg):
    """The Hub YAML metadata (``huggingface_hub.ModelCardData``) of a bundle."""
    from huggingface_hub import ModelCardData

    m = cfg.metrics or {}
    results = [
        (k, m[k]) for k in ("accuracy", "balanced_accuracy", "malignant_auc", "auc_macro", "f1_macro") if isinstance(m.get(k), (int, float))
    ]
    metrics = [k.split("_")[-1] if k == "balanced_accuracy" else k for k, _ in results]
    kwargs = {}
    if results:
        from huggingface_hub import EvalResult

        kwargs["eval_results"] = [
            EvalResult(
                task_type="image-classification",
                dataset_type=DATASETS[0],
                dataset_name="HAM10000 (" + str(m.get("evaluated_on", "held-out")) + ")",
                metric_type=k,
                metric_value=float(v),
            )
            for k, v in results
        ]
        kwargs["model_name"] = cfg.name
    return ModelCardData(
        license=LICENSE,
        library_name="timm",
        pipeline_tag="image-classification",
        datasets=DATASETS,
        metrics=sorted(set(["accuracy", *metrics])),
        tags=TAGS,
        **kwargs,
    )


def readme(model: str | Path) -> str:
    """README.md of the Hub folder: the model card with validated Hub YAML metadata."""
    from .bundle import load_config, resolve_model_path
    from .card import render

    cfg = load_config(resolve_model_path(model), check_backbones=False)
    text = f"---\n{card_data(cfg).to_yaml()}\n---\n\n" + render(model)
    check_readme(text)
    return text


def check_readme(text: str) -> None:
    """The metadata checks made here (``ModelCard.validate`` is a call to the Hub's server): the YAML parses
    into ``ModelCardData`` and names the license, pipeline tag, datasets, metrics and tags."""
    from huggingface_hub import ModelCard

    card = ModelCard(text, ignore_metadata_errors=False)
    d = card.data.to_dict()
    missing = [k for k in ("license", "pipeline_tag", "datasets", "metrics", "tags") if not d.get(k)]
    if missing:
        raise SkinLesionError(f"The Hub model card lacks {', '.join(missing)}; this is a bug in skinlesion.hub.")


def export_hub(model: str | Path, out: str | Path) -> Path:
    """Write ``model`` as a Hub-format folder ``out`` (config.json, model.safetensors, README.md); returns ``out``.

    The folder is assembled beside ``out`` and renamed into place, so a kill leaves no half folder."""
    from .bundle import _strict, load_config, resolve_model_path

    src = resolve_model_path(model)
    cfg = load_config(src, check_backbones=False)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SkinLesionError(f"{out} exists and is not an empty folder; pass a new folder for the Hub export.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shutil.copyfile(src, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(_strict(timm_config(cfg)), indent=2, allow_nan=False) + "\n")
        (tmp / "README.md").write_text(readme(model))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
