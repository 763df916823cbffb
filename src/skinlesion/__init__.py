"""skinlesion: classify dermatoscopic images into the seven HAM10000 diagnoses.

Read top-down:

- :mod:`skinlesion.classes`     the registry of diagnoses (names, plain and neutral descriptions, malignancy) and
                                label sets (a model's classes, carried in its bundle; HAM10000's seven)
- :mod:`skinlesion.data`        one ``Dataset`` from every reader: HAM10000 / DermaMNIST and prepared caches, the ISIC
                                2019 / 2020 / isic-cli layouts, litdata streaming chunks (``data.shards``: write,
                                read; ``data.stream``: train from them, sharded across DDP ranks by litdata),
                                several combined; splits and CV folds (by lesion, or patient), the leakage audit
                                (shared lesions, near-duplicates), synthetic data, downloads, loaders
- :mod:`skinlesion.errors`      the one user-facing error, one writer per folder, atomic files, link-safe scans
- :mod:`skinlesion.intake`      opening one image file safely (EXIF, modes, bombs, corrupt files)
- :mod:`skinlesion.preprocess`  the ONE definition of image preprocessing and augmentation
- :mod:`skinlesion.corruptions` what real photos get wrong, at five severities (robustness benchmark, quality fit)
- :mod:`skinlesion.augment`     the training augmentation over whole batches on the training device (GPU or CPU)
- :mod:`skinlesion.models`      timm backbones, their ImageNet weights, the preprocessing resolver, stage features
- :mod:`skinlesion.bundle`      the model on disk (safetensors + validated JSON; members, rules); its only writer
- :mod:`skinlesion.recipe`      the training recipe (``TrainConfig``), read and checked before torch is imported
- :mod:`skinlesion.losses`      the training objective for the tail: weighted / logit-adjusted / balanced-softmax
                                cross-entropy, deferred re-weighting, mixup and CutMix (timm)
- :mod:`skinlesion.train`       Lightning training (``LesionModule``, ``ExportModels``) of one network, its experiment tracking (TensorBoard, CSV, MLflow)
- :mod:`skinlesion.finish`      a single run's post-training step (TTA choice, calibration, rules, OOD) on val
- :mod:`skinlesion.cv`          cross-validated ensembles: members, out-of-fold predictions, assembly
- :mod:`skinlesion.posthoc`     fitted after training: calibration with prior correction, metadata fusion,
                                refer threshold, conformal sets (crepes), triage tier, decision rules
- :mod:`skinlesion.calibration` temperature scaling and expected calibration error
- :mod:`skinlesion.metrics`     classification, calibration, risk-coverage, conformal and subgroup metrics
- :mod:`skinlesion.evaluate`    the inference loop over a dataset, the evaluation report
- :mod:`skinlesion.predict`     the predictor used by the CLI, the API and the app (PyTorch or ONNX Runtime)
- :mod:`skinlesion.ood`         out-of-distribution score fitted on the training features ("is this dermoscopy")
- :mod:`skinlesion.imagework`   the image the photo checks measure (the model's source, <= 128 px) and a lesion's Otsu split
- :mod:`skinlesion.skintone`    skin tone: the ITA of the skin around the lesion, its bands, the out-of-range flag
- :mod:`skinlesion.quality`     photo quality: what is wrong with a dermoscopic photo and how to retake it, on the
                                image the model sees (fitted per model)
- :mod:`skinlesion.photo_quality` photo quality on the photo as uploaded (blur, exposure; from 256 px a side), with
                                thresholds set on the real full-resolution sample and its synthetic copies
- :mod:`skinlesion.verdict`     the words of a result (tier, malignant summary, named class): app, report, CSV, API
- :mod:`skinlesion.runtime`     thread pools sized to the usable cores, no spin-waiting
- :mod:`skinlesion.explain`     Grad-CAM heat maps
- :mod:`skinlesion.export`      ONNX export with a parity check
- :mod:`skinlesion.hub`         Hugging Face Hub folders (timm's layout) and ``hf://`` models
- :mod:`skinlesion.hub_export`  export a bundle as a Hub folder: config.json, model.safetensors, README.md (card YAML)
- :mod:`skinlesion.isic`        the ISIC 2018 Task 3 files: submission CSV, ground truth
- :mod:`skinlesion.card`        the model card, generated from a bundle
- :mod:`skinlesion.report`      the one-page HTML report of one analysed image
- :mod:`skinlesion.sample`      the app's bundled sample image (a HAM10000 melanoma) with its ground truth
- :mod:`skinlesion.app`         the Streamlit web app
- :mod:`skinlesion.serve`       the REST service (FastAPI on uvicorn): routes over the predictor, API keys,
                                connection and request limits, metrics, draining on SIGTERM, the ``predict --server`` client
- :mod:`skinlesion.study`       reader studies: the study database (SQLAlchemy + Alembic; SQLite or PostgreSQL), cases
                                with the model's out-of-fold answers, reading (solo, then assisted), the report
                                (bootstrap intervals, Fleiss' kappa, readers on the model's ROC curve), ``skinlesion study``
- :mod:`skinlesion.cli`         the ``skinlesion`` command (``app``, ``main``; also ``python -m skinlesion``), its verbs by
                                group: ``cli.data`` (info, split, audit, download, prepare), ``cli.train`` (train,
                                evaluate, export, card), ``cli.predict``, ``cli.serve`` (app, serve); ``cli.common``
                                the console, progress bar and atomic CSV writes

Heavy libraries (torch, timm) are imported lazily: ``import skinlesion`` is cheap, and the
names below load their module on first use::

    from skinlesion import Predictor
    p = Predictor("default")
    p.predict("lesion.jpg", meta={"age": 55, "sex": "male", "localization": "back"})
"""

from importlib import import_module

__version__ = "0.2.0"

_API = {
    "Predictor": "skinlesion.predict",
    "load_model": "skinlesion.bundle",
    "load_config": "skinlesion.bundle",
    "save_bundle": "skinlesion.bundle",
    "train": "skinlesion.train",
    "TrainConfig": "skinlesion.recipe",
    "train_cv": "skinlesion.cv",
    "evaluate": ("skinlesion.evaluate", "evaluate_model"),
    "evaluate_model": "skinlesion.evaluate",
    "load_dataset": "skinlesion.data",
    "make_split": "skinlesion.data",
    "cv_folds": "skinlesion.data.split",
    "SkinLesionError": "skinlesion.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'skinlesion' has no attribute {name!r}")
    where = _API[name]
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value
