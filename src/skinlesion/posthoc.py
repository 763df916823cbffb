"""What is fitted after training, and applied to every prediction: the analysis layer.

All of it is fitted on held-out predictions (an ensemble's out-of-fold ones, or a single
run's val set) and stored in the model bundle, so prediction, evaluation and the app apply
exactly the same rules:

- **calibration**: ``softmax(z / T + b)``, bias-corrected temperature scaling (Alexandari et
  al., ICML 2020). The per-class bias ``b`` undoes the class-prior shift that class-weighted
  training causes (the weighted loss over-predicts rare classes); at the NLL optimum the mean
  predicted share of every class equals its true share on the fitting set.
- **metadata fusion** (optional): a multinomial logistic regression on the calibrated image
  log-probabilities and the encoded age, sex and body site (:func:`encode_metadata`), trained
  with random metadata dropout, so any field may be missing. ``dx_type`` is never used: a
  lesion is biopsied because it looks malignant, so it leaks the label.
- **refer when unsure**: the top-class confidence below which a prediction is referred,
  chosen for a target coverage; an out-of-distribution upload is always referred.
- **conformal prediction sets** from ``crepes`` (split conformal, hinge nonconformity
  ``1 - p(true class)``): "one of: mel, nv" with marginal coverage >= the chosen confidence.
- **triage tier**: "see a dermatologist soon" whenever the malignant/pre-malignant probability
  reaches a threshold chosen for a target sensitivity (unsure or not: the unsure reason is kept
  beside it), else "unsure: refer" when referred, "routine" otherwise.
- **decision rules**: which class is named first. ``most-probable`` (the argmax of the calibrated
  probabilities: expected accuracy) and ``balanced`` (the argmax of ``p / prior ** alpha``, the
  prior-divided rule that balanced accuracy rewards, ``alpha`` chosen on held-out predictions).
  Both are stored with the model, one of them as its default; the probabilities never change.
"""

from __future__ import annotations

import numpy as np

from .classes import LabelSet

TIER_SOON = "see a dermatologist soon"
TIER_REFER = "unsure: refer"
TIER_ROUTINE = "routine"
SEXES = ("male", "female")
LOCALIZATIONS = (
    "abdomen",
    "acral",
    "back",
    "chest",
    "ear",
    "face",
    "foot",
    "genital",
    "hand",
    "lower extremity",
    "neck",
    "scalp",
    "trunk",
    "upper extremity",
)
META_FIELDS = ("age", "sex", "localization")


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# ---- calibration ------------------------------------------------------------------------


def calibrate(logits: np.ndarray, temperature: float = 1.0, bias=None) -> np.ndarray:
    """Calibrated probabilities ``softmax(z / T + b)``."""
    z = np.asarray(logits, np.float64) / float(temperature)
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    return np.exp(log_softmax(z))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, *, bias: bool = True) -> tuple[float, list[float] | None]:
    """(T, b) minimising the NLL of ``softmax(z / T + b)`` on held-out predictions."""
    from scipy.optimize import minimize

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, int)
    k = z.shape[1]
    onehot = np.eye(k)[y]

    def nll(theta):
        log_t = theta[0]
        b = theta[1:] if bias else np.zeros(k)
        s = z * np.exp(-log_t) + b
        lp = log_softmax(s)
        p = np.exp(lp)
        loss = -np.mean(lp[np.arange(len(y)), y])
        g_s = (p - onehot) / len(y)  # d loss / d s
        g_t = np.sum(g_s * (-z * np.exp(-log_t)))
        grad = np.concatenate([[g_t], g_s.sum(0)]) if bias else np.array([g_t])
        return loss, grad

    x0 = np.zeros(1 + (k if bias else 0))
    res = minimize(nll, x0, jac=True, method="L-BFGS-B", bounds=[(np.log(0.05), np.log(20.0))] + [(-10, 10)] * (k if bias else 0))
    t = float(np.exp(res.x[0]))
    if not bias:
        return t, None
    b = res.x[1:] - res.x[1:].mean()  # softmax ignores a common shift
    return t, [float(v) for v in b]


# ---- metadata -----------------------------------------------------------------------------


def _clean(v) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    s = str(v).strip().lower()
    return None if s in ("", "unknown", "nan", "none") else s


def encode_metadata(rows) -> np.ndarray:
    """Encode age, sex and body site: (N, 4 + len(LOCALIZATIONS)) float32; missing fields are zeros
    with a missing flag (age) or no active one-hot (sex, site).

    ``rows``: a DataFrame or a list of dicts with any of ``age``, ``sex``, ``localization``.
    Raises ValueError naming the first value it cannot read.
    """
    import pandas as pd

    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    n = len(df)
    x = np.zeros((n, 4 + len(LOCALIZATIONS)), np.float32)
    for i in range(n):
        age = _clean(df["age"].iat[i]) if "age" in df.columns else None
        if age is None:
            x[i, 1] = 1.0
        else:
            try:
                a = float(age)
            except ValueError:
                raise ValueError(f"age {age!r} is not a number") from None
            if not 0 <= a <= 120:
                raise ValueError(f"age {a:g} is outside 0-120")
            x[i, 0] = a / 100.0
        sex = _clean(df["sex"].iat[i]) if "sex" in df.columns else None
        if sex is not None:
            if sex not in SEXES:
                raise ValueError(f"sex {sex!r} is not one of {', '.join(SEXES)} (or empty)")
            x[i, 2 + SEXES.index(sex)] = 1.0
        site = _clean(df["localization"].iat[i]) if "localization" in df.columns else None
        if site is not None:
            if site not in LOCALIZATIONS:
                raise ValueError(f"localization {site!r} is not a HAM10000 site ({', '.join(LOCALIZATIONS)})")
            x[i, 4 + LOCALIZATIONS.index(site)] = 1.0
    return x


def _drop_fields(x: np.ndarray, rng, p: float) -> np.ndarray:
    """Metadata dropout: each field of each row independently set to missing with probability ``p``."""
    x = x.copy()
    n = len(x)
    age = rng.random(n) < p
    x[age, 0], x[age, 1] = 0.0, 1.0
    sex = rng.random(n) < p
    x[sex, 2:4] = 0.0
    site = rng.random(n) < p
    x[site, 4:] = 0.0
    return x


def fit_metadata(
    logp: np.ndarray, meta_x: np.ndarray, labels: np.ndarray, *, seed: int = 0, copies: int = 3, dropout: float = 0.3, c: float = 1.0
) -> dict[str, np.ndarray]:
    """Fit the fusion (multinomial logistic regression on [image log-probabilities, metadata])."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    xs = [np.hstack([logp, meta_x])]
    xs += [np.hstack([logp, _drop_fields(meta_x, rng, dropout)]) for _ in range(copies)]
    x = np.vstack(xs)
    y = np.tile(np.asarray(labels, int), copies + 1)
    lr = LogisticRegression(C=c, max_iter=2000)
    lr.fit(x, y)
    k = logp.shape[1]
    coef = np.zeros((k, x.shape[1]), np.float32)
    intercept = np.zeros(k, np.float32)
    if len(lr.classes_) == 2:  # scikit-learn's binary model: one row, the second class's logit against the first's 0
        coef[lr.classes_[1]], intercept[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
    else:
        coef[lr.classes_] = lr.coef_
        intercept[lr.classes_] = lr.intercept_
    intercept[np.setdiff1d(np.arange(k), lr.classes_)] = -30.0
    return {"meta.coef": coef, "meta.intercept": intercept}


def apply_metadata(logp: np.ndarray, meta_x: np.ndarray, tensors: dict) -> np.ndarray:
    """Probabilities of the fusion model."""
    s = np.hstack([logp, meta_x]) @ np.asarray(tensors["meta.coef"], np.float64).T + np.asarray(tensors["meta.intercept"], np.float64)
    return np.exp(log_softmax(s))


# ---- refer, conformal sets, tier ---------------------------------------------------------


def fit_refer(probs: np.ndarray, coverage: float = 0.8) -> float:
    """The confidence threshold that keeps the ``coverage`` most confident predictions."""
    conf = np.asarray(probs).max(axis=1)
    return float(np.quantile(conf, 1.0 - coverage, method="lower")) if coverage < 1 else 0.0


def hinge(probs: np.ndarray, labels=None) -> np.ndarray:
    """crepes' hinge nonconformity: 1 - p(label) per row, or for every class (N, 7) when no labels."""
    from crepes.extras import hinge as _hinge

    probs = np.asarray(probs, np.float64)
    if labels is None:
        return _hinge(probs)
    return _hinge(probs, np.arange(probs.shape[1]), np.asarray(labels, int))


def fit_conformal(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The calibration nonconformity scores (stored in the bundle as ``conformal.alphas``)."""
    return np.sort(hinge(probs, labels)).astype(np.float32)


def prediction_sets(probs: np.ndarray, alphas: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Boolean (N, 7): which classes are in each conformal set (crepes, no smoothing: deterministic)."""
    from crepes import ConformalClassifier

    cc = ConformalClassifier()
    cc.fit(np.asarray(alphas, np.float64))
    return cc.predict_set(hinge(probs), confidence=confidence, smoothing=False).astype(bool)


def malignant(probs: np.ndarray, classes: LabelSet | None = None) -> np.ndarray:
    """The malignant or pre-malignant probability: the sum over the label set's malignant classes."""
    from .metrics import malignant_probability

    return malignant_probability(probs, classes)


def fit_tier(probs: np.ndarray, labels: np.ndarray, sensitivity: float = 0.9, classes: LabelSet | None = None) -> float:
    """The largest malignant-probability threshold whose sensitivity is at least ``sensitivity``."""
    from .metrics import classes_for

    classes = classes_for(probs, classes)
    mal = malignant(probs, classes)
    pos = np.sort(mal[np.asarray(classes.malignant_mask)[np.asarray(labels, int)]])
    if len(pos) == 0:
        return 0.5
    k = int(np.floor((1.0 - sensitivity) * len(pos)))  # this many positives may fall below
    return float(pos[min(k, len(pos) - 1)])


def analyse(probs: np.ndarray, cfg, aux: dict, ood_flags=None) -> list[dict]:
    """Per image: refer (and why), the conformal prediction set and the triage tier, from the bundle's rules."""
    probs = np.asarray(probs, np.float64)
    n = len(probs)
    ood_flags = np.zeros(n, bool) if ood_flags is None else np.asarray(ood_flags, bool)
    conf = probs.max(axis=1)
    refer_t = (cfg.refer or {}).get("confidence_threshold")
    sets = None
    if cfg.conformal and "conformal.alphas" in aux:
        sets = prediction_sets(probs, aux["conformal.alphas"], cfg.conformal["confidence"])
    mal_t = (cfg.tier or {}).get("malignant_threshold")
    mal = malignant(probs, cfg.labels)
    codes = cfg.labels.codes
    out = []
    for i in range(n):
        members = [] if sets is None else [c for c, keep in zip(codes, sets[i]) if keep]
        reasons = []
        if ood_flags[i]:
            reasons.append("the image looks out of distribution")
        if refer_t is not None and conf[i] < refer_t:
            reasons.append(f"confidence {conf[i]:.2f} < {refer_t:.2f}")
        if sets is not None and not members:  # no class is plausible at this confidence: an atypical input
            reasons.append("no diagnosis fits (empty prediction set)")
        refer = bool(reasons)
        tier = None
        if mal_t is not None:  # a malignant probability at the "soon" threshold is never "unsure" or "routine"
            tier = TIER_SOON if mal[i] >= mal_t else (TIER_REFER if refer else TIER_ROUTINE)
        out.append({"refer": refer, "refer_reason": "; ".join(reasons), "prediction_set": members, "tier": tier})
    return out


# ---- decision rules ------------------------------------------------------------------------

RULE_MOST_PROBABLE = "most-probable"
RULE_BALANCED = "balanced"
RULES = (RULE_MOST_PROBABLE, RULE_BALANCED)
BALANCED_ALPHAS = tuple(round(a, 2) for a in np.arange(0.0, 1.0001, 0.05))


def rule_log_weights(decision: dict | None, rule: str, k: int) -> np.ndarray:
    """The log class weights of ``rule`` (zeros for the most probable class)."""
    if rule == RULE_MOST_PROBABLE:
        return np.zeros(k)
    rules = (decision or {}).get("rules") or {}
    if rule not in rules:
        from .errors import SkinLesionError

        have = ", ".join([RULE_MOST_PROBABLE, *[r for r in rules if r != RULE_MOST_PROBABLE]])
        raise SkinLesionError(f"This model has no {rule!r} decision rule; use one of {have}.")
    return np.log(np.asarray(rules[rule]["weights"], np.float64))


def default_rule(decision: dict | None) -> str:
    return (decision or {}).get("default", RULE_MOST_PROBABLE)


def decide(probs: np.ndarray, decision: dict | None = None, rule: str | None = None) -> np.ndarray:
    """The class each row names first under ``rule`` (default: the model's own): argmax of ``log p + log w``."""
    probs = np.asarray(probs, np.float64)
    rule = rule or default_rule(decision)
    w = rule_log_weights(decision, rule, probs.shape[1])
    return (np.log(np.clip(probs, 1e-300, None)) + w).argmax(axis=1)


def _balanced_accuracy(labels: np.ndarray, pred: np.ndarray, k: int) -> float:
    present = np.unique(labels)
    return float(np.mean([(pred[labels == c] == c).mean() for c in present])) if len(present) else float("nan")


def rule_metrics(probs: np.ndarray, labels: np.ndarray, decision: dict | None, codes) -> dict:
    """Per rule: accuracy, balanced accuracy and per-class recall of the class it names first."""
    labels = np.asarray(labels, int)
    out = {}
    names = [RULE_MOST_PROBABLE, *[r for r in ((decision or {}).get("rules") or {}) if r != RULE_MOST_PROBABLE]]
    for rule in names:
        pred = decide(probs, decision, rule)
        out[rule] = {
            "accuracy": float((pred == labels).mean()),
            "balanced_accuracy": _balanced_accuracy(labels, pred, len(codes)),
            "recall": {c: float((pred[labels == i] == i).mean()) if (labels == i).any() else float("nan") for i, c in enumerate(codes)},
        }
    return out


def fit_decision(probs: np.ndarray, labels: np.ndarray, *, default: str = RULE_MOST_PROBABLE, source: str = "out-of-fold") -> dict:
    """The stored decision rules, fitted on held-out calibrated probabilities.

    ``balanced``: weights ``prior ** -alpha`` with the prior the labels' class shares (what the
    calibrated probabilities are calibrated to) and ``alpha`` in 0..1 the one with the highest
    balanced accuracy on ``probs`` (the smallest such). ``default``: the rule named first.
    """
    if default not in RULES:
        from .errors import SkinLesionError

        raise SkinLesionError(f"Unknown decision rule {default!r}; use {' or '.join(RULES)}.")
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, int)
    k = probs.shape[1]
    prior = np.maximum(np.bincount(labels, minlength=k) / len(labels), 1.0 / len(labels))
    logp = np.log(np.clip(probs, 1e-300, None))
    scores = [(_balanced_accuracy(labels, (logp - a * np.log(prior)).argmax(1), k), -a) for a in BALANCED_ALPHAS]
    best, neg_alpha = max(scores)
    alpha = -neg_alpha
    w = prior**-alpha
    return {
        "default": default,
        "rules": {
            RULE_MOST_PROBABLE: {"description": "the most probable class (maximises expected accuracy)"},
            RULE_BALANCED: {
                "description": "the argmax of p / prior ** alpha (the prior-divided rule balanced accuracy rewards)",
                "alpha": float(alpha),
                "prior": [float(v) for v in prior],
                "weights": [float(v) for v in w / w.min()],
            },
        },
        "fitted_on": source,
    }


# ---- fitting everything at once ----------------------------------------------------------

REFER_COVERAGE = 0.8  # answer the 80 % most confident, refer the rest
CONFORMAL_CONFIDENCE = 0.9
TIER_SENSITIVITY = 0.9  # malignant/pre-malignant lesions sent to "soon" (more reach a dermatologist through "refer")


def fit_rules(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    coverage: float = REFER_COVERAGE,
    confidence: float = CONFORMAL_CONFIDENCE,
    sensitivity: float = TIER_SENSITIVITY,
    source: str = "out-of-fold",
    rule: str = RULE_MOST_PROBABLE,
    classes: LabelSet | None = None,
) -> tuple[dict, dict]:
    """The refer, conformal, tier and decision rules fitted on held-out calibrated probabilities.

    Returns (config fields ``refer``/``conformal``/``tier``/``decision``, auxiliary tensors ``conformal.alphas``).
    ``rule``: the decision rule the model names its top class by (:func:`fit_decision`).
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, int)
    t_refer = fit_refer(probs, coverage)
    kept = probs.max(axis=1) >= t_refer
    t_mal = fit_tier(probs, labels, sensitivity, classes)
    fields = {
        "refer": {
            "confidence_threshold": t_refer,
            "target_coverage": coverage,
            "fitted_on": source,
            "coverage": float(kept.mean()),
            "accuracy_kept": float((probs[kept].argmax(1) == labels[kept]).mean()),
        },
        "conformal": {
            "library": "crepes",
            "method": "split conformal, hinge nonconformity",
            "confidence": confidence,
            "n_calibration": int(len(labels)),
            "fitted_on": source,
        },
        "tier": {
            "malignant_threshold": t_mal,
            "target_sensitivity": sensitivity,
            "fitted_on": source,
            "tiers": [TIER_SOON, TIER_REFER, TIER_ROUTINE],
        },
        "decision": fit_decision(probs, labels, default=rule, source=source),
    }
    return fields, {"conformal.alphas": fit_conformal(probs, labels)}


def cross_fitted(fit_apply, n: int, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold outputs of a post-hoc step: for each fold, fit on the others and apply to it.

    ``fit_apply(train_mask, test_mask)`` returns the outputs for the rows of ``test_mask``.
    """
    out = None
    for f in np.unique(folds):
        test = folds == f
        res = np.asarray(fit_apply(~test, test))
        if out is None:
            out = np.zeros((n, *res.shape[1:]), res.dtype)
        out[test] = res
    return out
