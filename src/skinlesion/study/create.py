"""Making a study: the cases (with ground truth and the model's answer), the readers' tokens, the admin key.

Cases are drawn class-stratified (as equal a number per diagnosis as the data allows, one image per lesion,
reproducible from ``--seed``) or named with ``--ids``. The model's answer for a case is its **out-of-fold**
prediction where the image is in the model's own training data (a cross-validated bundle stores the logits
of each training image from the member that never saw it): a fresh prediction there would be an in-sample
answer, too good. Any other image gets a fresh prediction. Where the model trained on an image and holds no
out-of-fold prediction for it, the study is refused. Which source each case used is stored and reported.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SkinLesionError
from .store import ARMS, Case, Reader, Store, Study, new_token, now, token_hash


@dataclass
class CaseSpec:
    image_id: str
    truth: str
    image: bytes  # PNG
    probs: dict
    top: str
    malignant: float
    tier: str | None
    source: str  # "out-of-fold" or "fresh"
    heatmap: bytes | None = None


def png(image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in str(text).split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if not arms or bad or len(set(arms)) != len(arms):
        raise SkinLesionError(f"--arms {text!r} must list solo and/or assisted, comma-separated (e.g. solo,assisted).")
    return arms


def select_cases(meta, n: int, seed: int, ids: list[str] | None = None) -> np.ndarray:
    """Row positions of the study's cases: ``ids`` in their order, or ``n`` drawn class-stratified, one per lesion."""
    if ids:
        where = {v: i for i, v in enumerate(meta["image_id"].astype(str))}
        unknown = [i for i in ids if i not in where]
        if unknown:
            raise SkinLesionError(f"--ids names {len(unknown)} image(s) not in DATA (first: {unknown[0]}); check the ids.")
        if len(set(ids)) != len(ids):
            raise SkinLesionError("--ids names an image twice; list each image once.")
        return np.array([where[i] for i in ids])
    if n < 1:
        raise SkinLesionError(f"--cases {n} must be at least 1.")
    rng = np.random.default_rng(seed)
    lesion = meta["lesion_id"].astype(str).to_numpy() if "lesion_id" in meta else meta["image_id"].astype(str).to_numpy()
    dx = meta["dx"].astype(str).to_numpy()
    order = rng.permutation(len(meta))
    seen, pools = set(), {}
    for i in order:  # one image per lesion (the first in the seeded order), pooled by diagnosis
        if lesion[i] in seen:
            continue
        seen.add(lesion[i])
        pools.setdefault(dx[i], []).append(int(i))
    if n > len(seen):
        raise SkinLesionError(f"--cases {n} is more than the {len(seen)} lesions in DATA; ask for at most {len(seen)}.")
    take = {dx: 0 for dx in pools}
    left = n
    while left:  # round-robin over the diagnoses that still have images: as equal as the data allows
        for dx in sorted(pools):
            if left and take[dx] < len(pools[dx]):
                take[dx] += 1
                left -= 1
    chosen = [i for dx in sorted(pools) for i in pools[dx][: take[dx]]]
    return np.array(sorted(chosen, key=lambda i: rng.random()))


def _training_ids(cfg, train_data: str | None):
    """The image ids of the model's training data in the order of its stored OOF rows (None: unknown)."""
    from ..data import load_dataset

    where = train_data or (cfg.train or {}).get("data")
    if not where:
        return None, None
    try:
        ds = load_dataset(where)
    except SkinLesionError as exc:
        raise SkinLesionError(
            f"The model's training data {where} cannot be opened ({exc}); pass its location with --train-data so that "
            "images it trained on get their out-of-fold answers."
        ) from None
    return ds.meta["image_id"].astype(str).to_numpy(), ds


def same_image(a, b, tolerance: float = 12.0) -> bool:
    """Whether two images are one picture (at the smaller one's size: a 28 px copy of a full-resolution image is the
    same image); an id shared by different pictures (a synthetic set numbered like HAM10000) is not."""
    small, large = (a, b) if a.size[0] * a.size[1] <= b.size[0] * b.size[1] else (b, a)
    x = np.asarray(small.convert("RGB"), np.float32)
    y = np.asarray(large.convert("RGB").resize(small.size, 2), np.float32)  # 2: bilinear
    return float(np.abs(x - y).mean()) <= tolerance


def model_answers(ds, rows: np.ndarray, model: str, *, train_data: str | None = None, heatmaps: bool = False) -> tuple[list[CaseSpec], str]:
    """Each chosen row's case (image, truth, model answer) and a sentence saying where the answers came from."""
    from ..bundle import load_config, resolve_model_path
    from ..card import oof_probabilities
    from ..posthoc import analyse, decide, malignant
    from ..predict import read_aux

    path = resolve_model_path(model)
    cfg = load_config(path, check_backbones=False)
    aux = read_aux(path)
    codes = list(cfg.labels.codes)
    bad = sorted(set(ds.meta["dx"].iloc[rows].astype(str)) - set(codes))
    if bad:
        raise SkinLesionError(f"DATA holds diagnoses the model does not know ({', '.join(bad)}); choose images of {', '.join(codes)}.")
    train_ids, train_ds = _training_ids(cfg, train_data)
    oof_row = {}
    if train_ids is not None:
        if "oof.logits" in aux:
            if len(train_ids) != len(aux["oof.labels"]) or not np.array_equal(np.asarray(train_ds.labels), np.asarray(aux["oof.labels"])):
                raise SkinLesionError(
                    "The model's training data as found does not match its stored out-of-fold predictions (other images "
                    "or order); pass the exact data it was trained on with --train-data."
                )
            oof_row = {v: i for i, v in enumerate(train_ids)}
        else:
            where = {v: i for i, v in enumerate(train_ids)}
            trained = {
                v
                for r, v in zip(rows, ds.meta["image_id"].iloc[rows].astype(str))
                if v in where and same_image(ds.image(int(r)), train_ds.image(where[v]))
            }
            if trained:
                raise SkinLesionError(
                    f"The model trained on {len(trained)} of these images (e.g. {sorted(trained)[0]}) and holds no out-of-fold "
                    "predictions for them; choose other images (--ids) or a cross-validated model."
                )
    ids = ds.meta["image_id"].iloc[rows].astype(str).to_list()
    oof_probs = oof_probabilities(cfg, aux) if oof_row else None
    predictor, namesakes = None, 0
    specs = []
    for r, image_id in zip(rows, ids):
        image = ds.image(int(r))
        truth = str(ds.meta["dx"].iloc[int(r)])
        source = None
        if image_id in oof_row and not same_image(image, train_ds.image(oof_row[image_id])):
            namesakes += 1  # the id of a training image, but another picture: a new image, answered fresh
        elif image_id in oof_row:
            p = np.asarray(oof_probs[oof_row[image_id]], np.float64)[None]
            top = codes[int(decide(p, cfg.decision)[0])]
            tier = analyse(p, cfg, aux)[0]["tier"]
            mal, source = float(malignant(p, cfg.labels)[0]), "out-of-fold"
            probs = {c: float(v) for c, v in zip(codes, p[0])}
        if source is None:
            predictor = predictor or _predictor(model)
            meta = {k: ds.meta[k].iloc[int(r)] for k in ("age", "sex", "localization") if k in ds.meta}
            pred = predictor.predict_images([image], [image_id], meta=[meta])[0]
            top, tier, mal, source, probs = pred.top, pred.tier, float(pred.malignant_probability), "fresh", dict(pred.probabilities)
        heat = None
        if heatmaps:
            from ..explain import overlay

            predictor = predictor or _predictor(model)
            heat = png(overlay(image, predictor.explain(image, codes.index(top))))
        specs.append(CaseSpec(image_id, truth, png(image), probs, top, mal, tier, source, heat))
    n_oof = sum(s.source == "out-of-fold" for s in specs)
    said = (
        f"{n_oof} of {len(specs)} model answers are out-of-fold predictions (images in the model's training data, "
        f"each from the member that never saw it); {len(specs) - n_oof} are fresh predictions"
    )
    if namesakes:
        said += f" ({namesakes} image(s) share a training image's id but not its picture, so they count as new)"
    return specs, said


def _predictor(model: str):
    from ..predict import Predictor

    return Predictor(model)


def add_study(
    store: Store,
    specs: list[CaseSpec],
    *,
    labels,
    malignant_codes,
    model: str,
    model_hash: str = "",
    arms=("solo",),
    education: bool = False,
    tier_threshold: float | None = None,
    model_answers_said: str = "",
    seed: int = 0,
    name: str = "",
) -> tuple[str, str]:
    """Write a study and its cases in one transaction; returns (study id, admin key)."""
    if not specs:
        raise SkinLesionError("A study needs at least one case.")
    study_id, admin_key = secrets.token_hex(4), new_token()
    with store.session() as s:
        s.add(
            Study(
                id=study_id,
                created_at=now(),
                name=name,
                model=str(model),
                model_hash=model_hash,
                labels=list(labels),
                malignant=list(malignant_codes),
                arms=list(arms),
                education=education,
                admin_key_hash=token_hash(admin_key),
                tier_threshold=tier_threshold,
                model_answers=model_answers_said,
                seed=int(seed),
            )
        )
        s.flush()
        for k, c in enumerate(specs, 1):
            s.add(
                Case(
                    study_id=study_id,
                    position=k,
                    image_id=c.image_id,
                    truth=c.truth,
                    image=c.image,
                    model_probs=c.probs,
                    model_top=c.top,
                    model_malignant=c.malignant,
                    model_tier=c.tier,
                    model_source=c.source,
                    heatmap=c.heatmap,
                )
            )
    return study_id, admin_key


def invite(store: Store, study_id: str, n: int, arm: str | None = None) -> list[tuple[str, str, str]]:
    """``n`` new readers of a study in one transaction: (label, arm, token) each; arms alternate unless ``arm``."""
    if not 1 <= n <= 10000:
        raise SkinLesionError(f"--readers {n} must be from 1 to 10000.")
    with store.session() as s:
        study = store.study(s, study_id)
        if arm is not None and arm not in study.arms:
            raise SkinLesionError(f"--arm {arm!r} is not an arm of study {study_id}; its arms are {', '.join(study.arms)}.")
        have = s.query(Reader).filter(Reader.study_id == study_id).count()
        out = []
        for k in range(n):
            token = new_token()
            a = arm or study.arms[(have + k) % len(study.arms)]
            label = f"reader {have + k + 1}"
            s.add(Reader(study_id=study_id, token_hash=token_hash(token), label=label, arm=a, created_at=now()))
            out.append((label, a, token))
    return out


def create_study(
    store: Store,
    data: str | Path,
    *,
    model: str = "default",
    cases: int = 60,
    seed: int = 1,
    ids: list[str] | None = None,
    arms: str = "solo",
    education: bool = False,
    train_data: str | None = None,
    heatmaps: bool = True,
) -> tuple[str, str, str]:
    """The whole of ``skinlesion study create``: returns (study id, admin key, where the answers came from).

    ``heatmaps``: Grad-CAM maps for the assisted arm (torch, seconds per case on a CPU)."""
    from ..bundle import bundle_hash, load_config, resolve_model_path
    from ..data import load_dataset

    arm_list = parse_arms(arms)
    ds = load_dataset(data)
    rows = select_cases(ds.meta, cases, seed, ids)
    specs, said = model_answers(ds, rows, model, train_data=train_data, heatmaps=heatmaps and "assisted" in arm_list)
    path = resolve_model_path(model)
    cfg = load_config(path, check_backbones=False)
    study_id, admin_key = add_study(
        store,
        specs,
        labels=cfg.labels.codes,
        malignant_codes=cfg.labels.malignant,
        model=str(model),
        model_hash=bundle_hash(path)[:12],
        arms=arm_list,
        education=education,
        tier_threshold=(cfg.tier or {}).get("malignant_threshold"),
        model_answers_said=said,
        seed=seed,
        name=f"{Path(str(data)).name}: {len(specs)} cases",
    )
    return study_id, admin_key, said
