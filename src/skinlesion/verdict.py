"""What a result says: the one place that words a prediction for people.

The app, the HTML report, ``predict``'s CSV and the REST API all show :func:`verdict`'s
sentences, so they cannot disagree. Its rules:

- the triage tier is the headline. A malignant or pre-malignant probability at or above the
  tier's "soon" threshold is always "see a dermatologist soon", unsure or not; the unsure
  reason is shown beside it (:func:`skinlesion.posthoc.analyse` decides the tier);
- the malignant summary is always stated against that threshold, never as a bare "benign";
- the names and description of the classes never reassure ("harmless", "benign keratosis") unless the
  tier is routine (:attr:`Verdict.names` holds the names every view shows);
- the decision rule that named the class is said (:mod:`skinlesion.posthoc` decision rules);
- photo-quality problems come first, as advice to retake (the analysis is still shown); those the
  model-input check (:mod:`skinlesion.quality`) and the check on the photo as uploaded
  (:mod:`skinlesion.photo_quality`) both name are said once (:func:`quality_advice`);
- skin darker than the range of the model's training images is said (:func:`skin_tone_note`), after them;
- an out-of-distribution upload is not analysed: its verdict is :data:`NOT_ANALYSED` with the reason that
  fired (no colour, or the feature distance), it has no tier, and the numbers of the analysis it would
  have had are marked unreliable (:attr:`Verdict.analysis` holds that analysis's tier line, for the app's
  "Analyse anyway").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

HEADLINES = {
    "see a dermatologist soon": "See a dermatologist soon",
    "unsure: refer": "Unsure: have a dermatologist look at it",
    "routine": "Routine: no sign of urgency in this image",
}
NOT_ANALYSED = "Not analysed: this does not look like a dermoscopic image"
UNRELIABLE = "Unreliable (not analysed)"
# why an upload is out of distribution: skinlesion.predict.Prediction.ood_reasons -> words
OOD_REASONS = {
    "colour": "it has almost no colour (a greyscale photo?), and skin has colour",
    "distance": "its features are far from the training images' (out-of-distribution score {score:.2f} > threshold {threshold:.2f})",
}
RULE_NAMES = {"most-probable": "most probable", "balanced": "balanced (rare classes weighted up)"}


@dataclass(frozen=True)
class Verdict:
    """The words of one result, in the order a result card shows them."""

    tier: str | None
    headline: str  # "See a dermatologist soon"
    reason: str  # why this tier (with the unsure reason beside a "soon")
    summary: str  # the malignant probability against the tier's threshold
    decision: str  # the named class, its probability and the rule that named it
    description: str  # plain words about the named class; reassuring only when the tier is routine
    top_three: str
    prediction_set: str
    rule: str
    advice: tuple[str, ...] = field(default_factory=tuple)  # photo quality, out of distribution: shown first
    names: dict = field(default_factory=dict)  # code -> the name to show (never reassuring unless routine)
    analysed: bool = True  # False: out of distribution, the headline is NOT_ANALYSED and there is no tier
    analysis: str = ""  # not analysed: the tier line the unreliable analysis would have had ("Analyse anyway")
    skin_tone: str = ""  # skin darker than the training range: the few-dark-images sentence (also in ``advice``)

    @property
    def line(self) -> str:
        """Headline and reason in one sentence (the CSV's ``verdict`` column)."""
        return f"{self.headline} ({self.reason})" if self.reason else self.headline

    def lines(self) -> list[str]:
        """Every sentence, in card order (for plain-text views)."""
        return [*self.advice, self.line, self.summary, self.decision, self.description, self.top_three, self.prediction_set]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["advice"] = list(self.advice)
        d["line"] = self.line
        return d


def _pct(p: float) -> str:
    return f"{100 * p:.1f} %"


def malignant_summary(mal: float, threshold: float | None, malignant_codes) -> str:
    """The malignant probability said against the tier's threshold (never a bare "benign")."""
    which = f" ({', '.join(malignant_codes)})" if malignant_codes else ""
    head = f"Malignant or pre-malignant{which}: {_pct(mal)}"
    if threshold is None:
        return f"{head}; this model states no threshold for seeing a dermatologist."
    side = "above" if mal > threshold else ("at" if mal == threshold else "below")
    return f"{head}, {side} the {_pct(threshold)} at which it advises a dermatologist soon."


def ood_reason(pred, threshold: float | None = None) -> str:
    """Why ``pred`` is out of distribution: each check that fired (colour floor, feature distance), in words."""
    reasons = list(getattr(pred, "ood_reasons", None) or [])
    if not reasons:  # flagged by a caller that did not say why
        return "it does not look like the images the model was trained on"
    score = pred.ood_score if pred.ood_score is not None else float("nan")
    th = threshold if threshold is not None else float("nan")
    return "; and ".join(OOD_REASONS[r].format(score=score, threshold=th) for r in reasons)


def skin_tone_note(pred, cfg) -> str:
    """:data:`skinlesion.skintone.FEW_DARK`, as a sentence with the measured angle and the training range's lower end,
    when ``pred``'s skin is darker than the model's training images ("" inside the range, or where not measured)."""
    if not getattr(pred, "skin_tone_outside", False):
        return ""
    from .skintone import FEW_DARK, training_range

    low = training_range(cfg)
    where = f"; the training images' 1st percentile is {low[0]:.0f} degrees" if low else ""
    return f"{FEW_DARK[0].upper()}{FEW_DARK[1:]} (skin tone: ITA {pred.ita:.0f} degrees, {pred.skin_tone}{where})."


def quality_advice(model_input, photo=None) -> tuple[list[str], list[str]]:
    """(problem codes, one sentence each) of both photo-quality checks: the model-input check's problems
    ``model_input`` and the full-resolution check's ``photo`` (a :class:`skinlesion.photo_quality.PhotoQuality`
    or None). A problem both name is said once; one only the photo shows says where it was seen."""
    from .quality import PROBLEMS, advice

    codes = list(dict.fromkeys(model_input or []))
    sentences = [advice(c) for c in codes]
    if photo is not None and photo.checked:
        w, h = photo.size
        for c in photo.problems:
            if c not in codes:
                what, how, _ = PROBLEMS[c]
                codes.append(c)
                sentences.append(
                    f"Photo quality: {what} (seen on the photo as uploaded, {w}x{h} px); {how}. The analysis below may be less reliable."
                )
    return codes, sentences


def photo_quality_line(photo) -> str:
    """What the full-resolution check measured, with how its thresholds were set (the CSV's and API's ``photo_quality``)."""
    if photo is None:
        return ""
    from .photo_quality import BLUR_BELOW, MIN_SIDE, OVER_CLIPPED, OVER_SKIN, UNDER_SKIN

    w, h = photo.size
    if not photo.checked:
        return f"not measured: {w}x{h} px is no larger than the image the model sees (photos from {MIN_SIDE} px a side are)"
    m = photo.measures
    sharp = "n/a (no detail)" if m["sharpness"] is None else f"{m['sharpness']:.2f}"
    return (
        f"{w}x{h} px: sharpness {sharp} (blurred under {BLUR_BELOW:.2f}), skin luminance {m['skin_luminance']:.0f} "
        f"(under {UNDER_SKIN:.0f} / over {OVER_SKIN:.0f}), clipped {100 * m['clipped']:.1f} % (over {100 * OVER_CLIPPED:.0f} %); "
        "thresholds set on one real 600x450 HAM10000 photo and its synthetic copies, not fitted to this model"
    )


def tier_shown(row: dict) -> str:
    """The tier column of a result row as a console shows it: "not analysed" for an out-of-distribution row."""
    tier = row.get("tier") or ""
    if not tier and str(row.get("verdict") or "").startswith(NOT_ANALYSED):
        return "not analysed"
    return tier


def verdict(pred, cfg) -> Verdict:
    """The words of ``pred`` (a :class:`skinlesion.predict.Prediction`) under the model config ``cfg``."""
    labels = cfg.labels
    threshold = (cfg.tier or {}).get("malignant_threshold")
    mal = float(pred.malignant_probability)
    tier = pred.tier
    if tier == "see a dermatologist soon":
        reason = f"malignant or pre-malignant probability {_pct(mal)} >= {_pct(threshold)}"
        if pred.refer_reason:
            reason += f"; also unsure: {pred.refer_reason}"
    elif tier is not None:
        reason = pred.refer_reason
    else:
        reason = ""
    headline = HEADLINES.get(tier, "No triage tier (this model has none)")

    routine = tier == "routine" and not pred.out_of_distribution  # an upload not analysed is never reassured
    names = {dd.code: dd.name if routine else dd.plain_name for dd in labels.diagnoses}
    d = labels.get(pred.top)
    rule = getattr(pred, "rule", None) or cfg.rule
    decision = (
        f"{names[d.code]} ({d.code}): calibrated probability {_pct(pred.top_probability)}; decision rule: {RULE_NAMES.get(rule, rule)}"
    )
    ranked = pred.ranked()
    if ranked and ranked[0][0] != pred.top:
        decision += f" (the most probable class is {names[ranked[0][0]]}, {_pct(ranked[0][1])})"
    description = d.description if routine else d.plain
    top_three = "Most likely: " + ", ".join(f"{names[c]} {_pct(p)}" for c, p in ranked[:3])
    conf = (cfg.conformal or {}).get("confidence")
    if conf is None:
        pset = "Prediction set: none (this model has no conformal calibration)."
    elif pred.prediction_set:
        pset = f"Prediction set ({100 * conf:.0f} %): one of " + ", ".join(names[c] for c in pred.prediction_set)
    else:
        pset = f"Prediction set ({100 * conf:.0f} %): empty; no diagnosis fits this image at that confidence."
    advice = list(getattr(pred, "quality_advice", []) or [])
    skin = skin_tone_note(pred, cfg)  # said out of distribution too: dark skin may be why it looks unlike the training images
    if skin:
        advice.append(skin)
    summary = malignant_summary(mal, threshold, labels.malignant)
    analysed, analysis = True, ""
    if pred.out_of_distribution:  # no tier, no diagnosis: the numbers stay, marked unreliable
        advice.append(
            "This image does not look like the dermoscopic images the model was trained on, so it is not analysed; "
            "upload a dermoscopic image of a skin lesion."
        )
        analysed = False
        analysis = f"{headline} ({reason})" if reason else headline
        tier, headline = None, NOT_ANALYSED
        reason = ood_reason(pred, (cfg.ood or {}).get("threshold"))
        summary = f"{UNRELIABLE}: the malignant or pre-malignant probability would be {_pct(mal)}; no advice is given for this image."
        decision = f"{UNRELIABLE}: {decision}"
    return Verdict(
        tier=tier,
        headline=headline,
        reason=reason,
        summary=summary,
        decision=decision,
        description=description,
        top_three=top_three,
        prediction_set=pset,
        rule=rule,
        advice=tuple(advice),
        names=names,
        analysed=analysed,
        analysis=analysis,
        skin_tone=skin,
    )
