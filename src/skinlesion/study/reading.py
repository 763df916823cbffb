"""What a reader sees and may do; the REST routes and the Streamlit page both call these two functions.

- :func:`next_case`: the reader's next case (their own order, shuffled per reader from the study's seed):
  the image and the choices, never the image id, the ground truth or the model's answer; in the
  ``assisted`` arm, once the solo answer of a case is locked, the same case again with the model's
  answer (probabilities, tier, heat map) for the revision.
- :func:`submit`: lock one answer (diagnosis, management, confidence 1-5; ``phase`` solo or assisted) in
  one transaction. A locked answer is never changed: a second one for the same case and phase is refused.

A token opens exactly one reader of one study; another study's token, or an unknown one, is refused (403).
Truth reaches the reader only in an education study, and only once the case is finished for them.
"""

from __future__ import annotations

import base64

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from ..errors import SkinLesionError
from .store import MANAGEMENT, PHASES, Answer, Case, Reader, Store, Study, now, token_hash, utc


class StudyRefusal(SkinLesionError):
    """A refused reading request: ``status`` is its HTTP status (403 token, 409 state, 422 input)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def authorize(store: Store, s, study_id: str, token: str | None) -> tuple[Study, Reader]:
    """The reader a token opens and its study, in one query; 403 for an unknown token or another study's."""
    found = (
        s.execute(select(Reader, Study).join(Study, Study.id == Reader.study_id).where(Reader.token_hash == token_hash(token))).first()
        if token
        else None
    )
    if found is None or found[0].study_id != study_id:
        raise StudyRefusal(403, f"This reader token is not valid for study {study_id}; open the link you were invited with.")
    return found[1], found[0]


def reader_order(study: Study, reader: Reader, case_ids: list[int]) -> list[int]:
    """The reader's own order of the study's cases (reproducible: the study's seed and the reader's id)."""
    rng = np.random.default_rng([int(study.seed), int(reader.id)])
    return [case_ids[i] for i in rng.permutation(len(case_ids))]


def _pending(store: Store, s, study: Study, reader: Reader) -> tuple[int | None, str | None, int, int, dict]:
    """(case id, phase) the reader is due to answer (None when done), finished cases, total, and the reader's
    answers by (case id, phase). The study's cases and each reader's order are fixed when they are created,
    so they are read once per process (:meth:`Store.fixed`); the answers are read every time."""
    case_ids = store.fixed(
        ("cases", study.id), lambda: list(s.scalars(select(Case.id).where(Case.study_id == study.id).order_by(Case.position)))
    )
    order = store.fixed(("order", reader.id), lambda: reader_order(study, reader, case_ids))
    rows = s.execute(
        select(Answer.case_id, Answer.phase, Answer.diagnosis, Answer.management, Answer.confidence).where(Answer.reader_id == reader.id)
    ).tuples()
    answered = {(c, p): {"diagnosis": dx, "management": m, "confidence": k} for c, p, dx, m, k in rows}
    phases = ("solo", "assisted") if reader.arm == "assisted" else ("solo",)
    finished = sum(1 for c in case_ids if all((c, p) in answered for p in phases))
    for c in order:
        for p in phases:
            if (c, p) not in answered:
                return c, p, finished, len(case_ids), answered
    return None, None, finished, len(case_ids), answered


def model_answer(case: Case, study: Study) -> dict:
    """The model's answer to a case, as the assisted arm shows it (after the solo answer is locked)."""
    return {
        "diagnosis": case.model_top,
        "probabilities": case.model_probs,
        "malignant_probability": case.model_malignant,
        "tier": case.model_tier,
        "heatmap": base64.b64encode(case.heatmap).decode() if case.heatmap else None,
        "source": case.model_source,
    }


def next_case(store: Store, study_id: str, token: str | None) -> dict:
    """``{"done": true}`` or the case to read now (``phase`` solo, or assisted with the model's answer)."""
    with store.session() as s:
        study, reader = authorize(store, s, study_id, token)
        case_id, phase, finished, total, answered = _pending(store, s, study, reader)
        progress = {"finished": finished, "total": total}
        score = {"score": running_score(s, reader)} if study.education else {}  # education: the reader's own running score
        if case_id is None:
            return {"done": True, "progress": progress, "arm": reader.arm, **score}
        case = s.get(Case, case_id, options=[] if phase == "assisted" else [defer(Case.heatmap)])
        if reader.shown_case_id != case_id or reader.shown_phase != phase:  # a reload keeps the first time shown
            reader.shown_case_id, reader.shown_phase, reader.shown_at = case_id, phase, now()
        out = {
            "case": case.position,
            "image": base64.b64encode(case.image).decode(),
            "image_type": "image/png",
            "done": False,
            "phase": phase,
            "arm": reader.arm,
            "progress": progress,
            "diagnoses": list(study.labels),
            "management": list(MANAGEMENT),
            **score,
        }
        if phase == "assisted":
            out["solo_answer"] = answered[(case_id, "solo")]
            out["model"] = model_answer(case, study)
        return out


def _check_body(body: dict, study: Study) -> tuple[int, str, str, int, str]:
    if not isinstance(body, dict):
        raise StudyRefusal(422, "The answer must be a JSON object with case, diagnosis, management and confidence.")
    unknown = sorted(set(body) - {"case", "diagnosis", "management", "confidence", "phase"})
    if unknown:
        raise StudyRefusal(422, f"Unknown field {unknown[0]!r}; an answer has case, diagnosis, management, confidence and phase.")
    for name in ("case", "diagnosis", "management", "confidence"):
        if body.get(name) is None:
            raise StudyRefusal(422, f"The answer has no {name}; send case, diagnosis, management and confidence.")
    case, confidence = body["case"], body["confidence"]
    if not isinstance(case, int) or isinstance(case, bool):
        raise StudyRefusal(422, f"case {case!r} is not a case number; send the number GET next gave.")
    if body["diagnosis"] not in study.labels:
        raise StudyRefusal(422, f"diagnosis {body['diagnosis']!r} is not one of {', '.join(study.labels)}.")
    if body["management"] not in MANAGEMENT:
        raise StudyRefusal(422, f"management {body['management']!r} is not one of {', '.join(MANAGEMENT)}.")
    if not isinstance(confidence, int) or isinstance(confidence, bool) or not 1 <= confidence <= 5:
        raise StudyRefusal(422, f"confidence {confidence!r} must be a whole number from 1 (guess) to 5 (certain).")
    phase = body.get("phase") or "solo"
    if phase not in PHASES:
        raise StudyRefusal(422, f"phase {phase!r} is not one of {', '.join(PHASES)}.")
    return case, body["diagnosis"], body["management"], confidence, phase


def submit(store: Store, study_id: str, token: str | None, body: dict) -> dict:
    """Lock one answer; returns what the reader may now see (the model's answer in the assisted arm, the
    truth and running score in an education study once the case is finished)."""
    try:
        with store.session() as s:
            study, reader = authorize(store, s, study_id, token)
            position, diagnosis, management, confidence, phase = _check_body(body, study)
            case = s.scalars(select(Case).options(defer(Case.image)).where(Case.study_id == study_id, Case.position == position)).first()
            if case is None:
                raise StudyRefusal(422, f"Study {study_id} has no case {position}; send the number GET next gave.")
            mine = {a.phase: a for a in s.scalars(select(Answer).where(Answer.reader_id == reader.id, Answer.case_id == case.id))}
            if phase in mine:
                raise StudyRefusal(409, f"Your {phase} answer to case {position} is already locked; it cannot be changed.")
            if phase == "assisted":
                if reader.arm != "assisted":
                    raise StudyRefusal(409, "You read without assistance in this study; send solo answers only.")
                if "solo" not in mine:
                    raise StudyRefusal(409, f"Lock your solo answer to case {position} before the assisted one.")
            spent = None
            if reader.shown_case_id == case.id and reader.shown_phase == phase and reader.shown_at is not None:
                spent = max(0.0, (now() - utc(reader.shown_at)).total_seconds())
            s.add(
                Answer(
                    study_id=study_id,
                    reader_id=reader.id,
                    case_id=case.id,
                    phase=phase,
                    diagnosis=diagnosis,
                    management=management,
                    confidence=confidence,
                    created_at=now(),
                    time_spent_s=spent,
                )
            )
            s.flush()
            out = {"locked": True, "case": position, "phase": phase}
            finished_case = reader.arm != "assisted" or phase == "assisted"
            if not finished_case:
                out["model"] = model_answer(case, study)
            if study.education and finished_case:
                out["truth"] = case.truth
                out["model_diagnosis"] = case.model_top
                out["score"] = running_score(s, reader)
            return out
    except IntegrityError:  # the same answer sent twice at once: the database kept the first
        raise StudyRefusal(409, "This answer is already locked; it cannot be changed.") from None


def running_score(s, reader: Reader) -> dict:
    """The reader's final answers (assisted where given) against the model's, on the cases they finished."""
    rows = s.execute(
        select(Answer.case_id, Answer.phase, Answer.diagnosis, Case.truth, Case.model_top)
        .join(Case, Case.id == Answer.case_id)
        .where(Answer.reader_id == reader.id)
    ).all()
    final: dict[int, tuple] = {}
    for case_id, phase, dx, truth, model_top in rows:
        if case_id not in final or phase == "assisted":
            final[case_id] = (dx, truth, model_top, phase)
    if reader.arm == "assisted":
        final = {c: v for c, v in final.items() if v[3] == "assisted"}
    n = len(final)
    return {
        "cases": n,
        "you_correct": sum(dx == t for dx, t, _, _ in final.values()),
        "model_correct": sum(m == t for _, t, m, _ in final.values()),
    }


def progress(store: Store, study_id: str, admin_key: str | None) -> dict:
    """The study's progress for its admin (the key ``study create`` printed): answers per reader, no tokens."""
    with store.session() as s:
        study = s.get(Study, study_id)
        if study is None or not admin_key or token_hash(admin_key) != study.admin_key_hash:
            raise StudyRefusal(403, f"This admin key is not valid for study {study_id}; use the key `skinlesion study create` printed.")
        n_cases = s.query(Case).filter(Case.study_id == study_id).count()
        readers = []
        for r in s.scalars(select(Reader).where(Reader.study_id == study_id).order_by(Reader.id)):
            n = s.query(Answer).filter(Answer.reader_id == r.id).count()
            readers.append({"reader": r.label, "arm": r.arm, "answers": n})
        return {"study": study_id, "cases": n_cases, "readers": readers}
