"""The Streamlit reading page (AppTest): isolation, no early truth, progress that resumes, education's running score."""

from __future__ import annotations

from pathlib import Path

import pytest

from skinlesion.study.create import invite
from skinlesion.study.store import Answer, Store

from .study_support import synthetic_study

APP = str(Path(__file__).resolve().parents[1] / "src" / "skinlesion" / "app.py")
TRUTHS = ["mel", "nv", "bcc", "bkl"]


def _page(db, study, token):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["study"] = study
    if token is not None:
        at.query_params["token"] = token
    at.run()
    assert not at.exception, at.exception
    return at


def _text(at) -> str:
    parts = [
        str(x.value)
        for kind in ("markdown", "caption", "info", "error", "success", "warning", "subheader", "title")
        for x in getattr(at, kind)
    ]
    return "\n".join(parts)


def _lock(at, dx, mgmt="reassure"):
    at.radio[0].set_value(dx)
    at.radio[1].set_value(mgmt)
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception


@pytest.fixture
def study(tmp_path, monkeypatch):
    db = tmp_path / "study.sqlite"
    monkeypatch.setenv("SKINLESION_STUDY_DB", str(db))
    store = Store(db)
    sid, _ = synthetic_study(store, TRUTHS, ["mel", "nv", "nv", "bkl"], [0.9, 0.1, 0.3, 0.2], arms=("assisted",), education=True)
    other, _ = synthetic_study(store, ["nv"], ["nv"], [0.1])
    tokens = [t for _, _, t in invite(store, sid, 2)]
    return store, sid, tokens, invite(store, other, 1)[0][2]


def test_reading_page_no_early_truth_revision_score_and_resume(study, monkeypatch):
    store, sid, (tok, tok2), _ = study
    at = _page(None, sid, tok)
    text = _text(at)
    assert "0 of 4 cases finished" in str(at.get("progress")[0].proto.text)
    assert "Case " in text and "The model's answer" not in text and "diagnosis was" not in text and "IMG_" not in text
    case = int(at.subheader[0].value.split()[1].rstrip(":"))
    _lock(at, "nv")  # solo answer locked: now the model's answer, for the revision; still no truth
    text = _text(at)
    assert "The model's answer" in text and "your revision" in text and "diagnosis was" not in text
    assert int(at.subheader[0].value.split()[1].rstrip(":")) == case
    _lock(at, "nv")  # the revision: the case is finished, the truth and the running score follow (education)
    text = _text(at)
    assert (
        f"Case {case}: the diagnosis was" in text
        and "Your running score:" in text
        and "1 of 4 cases finished" in str(at.get("progress")[0].proto.text)
    )
    with store.session() as s:
        assert sorted(a.phase for a in s.query(Answer).all()) == ["assisted", "solo"]
    again = _page(None, sid, tok)  # a new browser session with the same link: goes on where the reader stopped
    assert "1 of 4 cases finished" in str(again.get("progress")[0].proto.text)
    assert int(again.subheader[0].value.split()[1].rstrip(":")) != case
    other = _page(None, sid, tok2)  # another reader sees none of it
    assert "0 of 4 cases finished" in str(other.get("progress")[0].proto.text) and "running score: 0 of 0" in _text(other)


def test_reading_page_refuses_wrong_tokens_and_an_incomplete_answer(study):
    _, sid, (tok, _), other_tok = study
    for token in (None, "nonsense", other_tok):
        at = _page(None, sid, token)
        assert "reader token is not valid for study" in _text(at) and not at.radio
    at = _page(None, sid, tok)
    at.radio[0].set_value("mel")
    at.button[0].click()
    at.run()
    assert "Choose a diagnosis and a management" in _text(at)
    assert "0 of 4 cases finished" in str(at.get("progress")[0].proto.text)
