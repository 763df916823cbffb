"""The study report: every locked answer as CSV, the numbers (``report.json``) and the ROC figure.

Per reader and pooled, for each phase (solo; assisted, after the model's answer was shown): accuracy and
balanced accuracy of the diagnosis; sensitivity and specificity of the management choice for melanoma and
for any malignant lesion (``excise`` is the positive call); each with a bootstrap 95 % interval over cases
(cases resampled, every answer to a drawn case kept, percentile interval). The model on the same cases (its
diagnosis; its positive call: a malignant probability at or above its "soon" tier threshold) with the same
intervals. Inter-reader agreement on the diagnosis: Fleiss' kappa over the cases every reader of a phase read.
The figure: the model's malignant ROC curve over the study's cases, each reader a point (solo, assisted),
an arrow from their solo to their assisted point.

Every number comes from ``answers.csv`` and the cases table alone, so it can be recomputed from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select

from ..errors import SkinLesionError, atomic_text, atomic_write, make_folder
from .store import Answer, Case, Reader, Store

COLUMNS = ["reader", "case", "image_id", "truth", "diagnosis", "management", "confidence", "arm", "phase", "time_spent_s", "answered_at"]
METRICS = (
    "accuracy",
    "balanced_accuracy",
    "melanoma_sensitivity",
    "melanoma_specificity",
    "malignant_sensitivity",
    "malignant_specificity",
)
N_BOOT = 1000


def tables(store: Store, study_id: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(study facts, answers table in ``COLUMNS`` order, cases table) of one study."""
    with store.session() as s:
        study = store.study(s, study_id)
        facts = {
            "study": study.id,
            "name": study.name,
            "model": study.model,
            "model_hash": study.model_hash,
            "model_answers": study.model_answers,
            "labels": list(study.labels),
            "malignant": list(study.malignant),
            "arms": list(study.arms),
            "education": bool(study.education),
            "tier_threshold": study.tier_threshold,
        }
        rows = s.execute(
            select(Reader.label, Case.position, Case.image_id, Case.truth, Answer.diagnosis, Answer.management, Answer.confidence)
            .add_columns(Reader.arm, Answer.phase, Answer.time_spent_s, Answer.created_at)
            .join(Reader, Reader.id == Answer.reader_id)
            .join(Case, Case.id == Answer.case_id)
            .where(Answer.study_id == study_id)
            .order_by(Reader.id, Case.position, Answer.phase.desc())
        ).all()
        cases = s.execute(
            select(Case.position, Case.image_id, Case.truth, Case.model_top, Case.model_malignant, Case.model_source)
            .where(Case.study_id == study_id)
            .order_by(Case.position)
        ).all()
    answers = pd.DataFrame([tuple(r) for r in rows], columns=COLUMNS)
    answers["answered_at"] = [t.isoformat() if t is not None else "" for t in answers["answered_at"]]
    cases = pd.DataFrame(
        [tuple(r) for r in cases], columns=["case", "image_id", "truth", "model_diagnosis", "model_malignant", "model_source"]
    )
    return facts, answers, cases


def _weighted(case_idx: np.ndarray, weights: np.ndarray, truth, diagnosis, positive, labels, malignant) -> dict[str, np.ndarray]:
    """Each metric under each row of ``weights`` (bootstrap draws x cases; a case's weight: how often it was drawn)."""
    w = weights[:, case_idx]  # draws x answers
    truth, diagnosis, positive = np.asarray(truth), np.asarray(diagnosis), np.asarray(positive, bool)
    correct = diagnosis == truth

    def mean(mask, value):
        den = (w * mask).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (w * (mask & value)).sum(axis=1) / np.where(den > 0, den, 1), np.nan)

    everything = np.ones_like(correct)
    recalls = [mean(truth == c, correct) for c in labels if (truth == c).any()]
    mel, mal = truth == "mel", np.isin(truth, list(malignant))
    return {
        "accuracy": mean(everything, correct),
        "balanced_accuracy": np.nanmean(np.vstack(recalls), axis=0) if recalls else np.full(len(w), np.nan),
        "melanoma_sensitivity": mean(mel, positive),
        "melanoma_specificity": mean(~mel, ~positive),
        "malignant_sensitivity": mean(mal, positive),
        "malignant_specificity": mean(~mal, ~positive),
    }


def metrics_with_ci(case: np.ndarray, truth, diagnosis, positive, labels, malignant, all_cases: np.ndarray, seed: int = 0) -> dict:
    """Point estimate and bootstrap 95 % interval (over ``all_cases``) of every metric; undefined ones are null."""
    index = {c: i for i, c in enumerate(all_cases)}
    case_idx = np.array([index[c] for c in case], int)
    ones = np.ones((1, len(all_cases)))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(all_cases), size=(N_BOOT, len(all_cases)))
    weights = np.zeros((N_BOOT, len(all_cases)))
    np.add.at(weights, (np.repeat(np.arange(N_BOOT), len(all_cases)), draws.ravel()), 1.0)
    point = _weighted(case_idx, ones, truth, diagnosis, positive, labels, malignant)
    boot = _weighted(case_idx, weights, truth, diagnosis, positive, labels, malignant)
    out = {"n_answers": int(len(case)), "n_cases": int(len(set(case)))}
    for k in METRICS:
        v = float(point[k][0])
        b = boot[k][np.isfinite(boot[k])]
        out[k] = None if not np.isfinite(v) else v
        out[f"{k}_ci95"] = None if not np.isfinite(v) or len(b) == 0 else [float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))]
    return out


def fleiss_kappa(ratings: pd.DataFrame, labels) -> float | None:
    """Fleiss' kappa of a cases x readers table of diagnoses (every cell filled); None below 2 readers or 1 case."""
    if ratings.shape[0] < 1 or ratings.shape[1] < 2:
        return None
    counts = np.stack([(ratings.to_numpy() == c).sum(axis=1) for c in labels], axis=1).astype(float)  # cases x classes
    n = counts.sum(axis=1)[0]
    p_j = counts.sum(axis=0) / counts.sum()
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_e = p_i.mean(), (p_j**2).sum()
    return None if p_e >= 1 else float((p_bar - p_e) / (1 - p_e))


def compute(facts: dict, answers: pd.DataFrame, cases: pd.DataFrame) -> dict:
    """``report.json``'s numbers from the answers and cases tables (see the module docstring)."""
    labels, malignant = facts["labels"], facts["malignant"]
    all_cases = cases["case"].to_numpy()
    report = {**facts, "n_cases": int(len(cases)), "n_readers": int(answers["reader"].nunique()), "bootstrap": N_BOOT}
    thr = facts["tier_threshold"]
    model_pos = cases["model_malignant"].to_numpy() >= (thr if thr is not None else 0.5)
    report["model"] = metrics_with_ci(all_cases, cases["truth"], cases["model_diagnosis"], model_pos, labels, malignant, all_cases)
    report["model"]["positive_call"] = f"malignant probability >= {thr if thr is not None else 0.5:.4f}"
    report["model"]["sources"] = {k: int(v) for k, v in cases["model_source"].value_counts().items()}
    report["pooled"], report["readers"], report["fleiss_kappa"] = {}, {}, {}
    for phase in ("solo", "assisted"):
        a = answers[answers["phase"] == phase]
        if a.empty:
            continue
        report["pooled"][phase] = metrics_with_ci(
            a["case"].to_numpy(), a["truth"], a["diagnosis"], a["management"] == "excise", labels, malignant, all_cases
        )
        for reader, r in a.groupby("reader", sort=False):
            report["readers"].setdefault(reader, {"arm": r["arm"].iloc[0]})[phase] = metrics_with_ci(
                r["case"].to_numpy(), r["truth"], r["diagnosis"], r["management"] == "excise", labels, malignant, all_cases
            )
        table = a.pivot(index="case", columns="reader", values="diagnosis").dropna()
        report["fleiss_kappa"][phase] = {
            "kappa": fleiss_kappa(table, labels),
            "n_cases": int(table.shape[0]),
            "n_readers": int(table.shape[1]),
        }
    return report


def roc_figure(report: dict, cases: pd.DataFrame, path: Path) -> Path:
    """The model's malignant ROC curve on the study's cases, readers as points (solo o, assisted ^), arrows between."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    y = cases["truth"].isin(report["malignant"]).to_numpy()
    fig, ax = plt.subplots(figsize=(6, 6))
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, cases["model_malignant"])
        ax.plot(fpr, tpr, color="black", label=f"model (AUC {roc_auc_score(y, cases['model_malignant']):.3f})")
    m = report["model"]
    if m["malignant_sensitivity"] is not None and m["malignant_specificity"] is not None:
        ax.plot(1 - m["malignant_specificity"], m["malignant_sensitivity"], "k*", markersize=14, label="model at its tier threshold")
    drawn = {"solo": False, "assisted": False}
    for reader, r in report["readers"].items():
        pts = {}
        for phase, marker, colour in (("solo", "o", "tab:blue"), ("assisted", "^", "tab:orange")):
            p = r.get(phase)
            if p and p["malignant_sensitivity"] is not None and p["malignant_specificity"] is not None:
                pts[phase] = (1 - p["malignant_specificity"], p["malignant_sensitivity"])
                ax.plot(*pts[phase], marker, color=colour, label=None if drawn[phase] else f"reader, {phase}")
                drawn[phase] = True
        if len(pts) == 2:
            ax.annotate("", xy=pts["assisted"], xytext=pts["solo"], arrowprops={"arrowstyle": "->", "color": "grey"})
    ax.plot([0, 1], [0, 1], ":", color="lightgrey")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="1 - specificity (malignant)", ylabel="sensitivity (malignant)")
    ax.set_title(f"Study {report['study']}: readers on the model's ROC curve ({report['n_cases']} cases)")
    ax.legend(loc="lower right", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def write_report(store: Store, study_id: str, out: str | Path) -> dict:
    """Write ``answers.csv``, ``report.json`` and ``roc.png`` into ``out``; returns the report."""
    out = make_folder(Path(out))
    facts, answers, cases = tables(store, study_id)
    if answers.empty:
        raise SkinLesionError(f"Study {study_id} has no locked answers yet; send readers their links (skinlesion study invite) first.")
    report = compute(facts, answers, cases)
    atomic_write(out / "answers.csv", lambda tmp: answers.to_csv(tmp, index=False))
    atomic_text(out / "report.json", json.dumps(report, indent=2))
    roc_figure(report, cases, out / "roc.png")
    return report
