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


def test_app_study_db_takes_the_reading_page_to_its_database(study, tmp_path, monkeypatch, run_cli):
    """Issue 26: `skinlesion app --study-db URL` starts the reading app with one flag (no environment variable)."""
    import sys

    import skinlesion.bundle
    import skinlesion.cli.serve

    from .conftest import free_port

    store, sid, (tok, _), _ = study
    monkeypatch.delenv("SKINLESION_STUDY_DB")
    started = []
    monkeypatch.setattr(skinlesion.cli.serve, "_serve", lambda cmd: started.append(cmd) or 0)  # not a real server
    monkeypatch.setattr(skinlesion.bundle, "onnx_for", lambda model: "exported")  # no ONNX export in this test
    db = tmp_path / "study.sqlite"
    code, out, err = run_cli("app", "--study-db", db, "--port", free_port(), "--address", "127.0.0.1")
    assert code == 0 and "readers open http://127.0.0.1:" in out and "?study=ID&token=TOKEN" in out, err
    (cmd,) = started
    options = dict(zip(cmd[cmd.index("run") + 2 : cmd.index("--") : 2], cmd[cmd.index("run") + 3 : cmd.index("--") : 2]))
    from streamlit import config

    for name in options:  # every option the app is started with is one this Streamlit knows
        config.get_option(name.removeprefix("--"))
    assert options["--runner.postScriptGC"] == "false"  # no full collection after each rerun (0.3-0.4 s CPU an answer)
    script_args = cmd[cmd.index("--") + 1 :]  # what the app's script gets as its sys.argv[1:]
    assert script_args[script_args.index("--study-db") + 1] == str(db.resolve())
    monkeypatch.setattr(sys, "argv", [APP, *script_args])
    at = _page(None, sid, tok)  # the page reads the flag: the reader's first case, from that database
    assert "0 of 4 cases finished" in str(at.get("progress")[0].proto.text) and "without a study database" not in _text(at)
    monkeypatch.setattr(sys, "argv", [APP])
    assert "skinlesion app --study-db URL" in _text(_page(None, sid, tok))  # none given: the page says how


def test_app_refuses_a_study_db_it_cannot_open_before_starting(tmp_path, monkeypatch, run_cli):
    import skinlesion.cli.serve

    monkeypatch.delenv("SKINLESION_STUDY_DB", raising=False)
    monkeypatch.setattr(skinlesion.cli.serve, "_serve", lambda cmd: pytest.fail("the app started"))
    code, _, err = run_cli("app", "--study-db", tmp_path / "typo.sqlite")
    assert code == 2 and "--study-db" in err and "does not exist; create the study first" in err and "Traceback" not in err, err
    assert not (tmp_path / "typo.sqlite").exists()  # no empty database made in its place
    code, _, err = run_cli("app", "--study-db", "mysql://reader@localhost/study")
    assert code == 2 and "--study-db" in err and "is not SQLite or PostgreSQL" in err, err


def test_reading_page_shows_the_case_and_the_heat_map_as_the_stored_png(study):
    """The case is shown losslessly, as stored: Streamlit would re-encode it as a JPEG (quality 90) otherwise."""
    store, sid, (tok, _), _ = study
    at = _page(None, sid, tok)
    urls = [i.url for img in at.get("image") for i in img.proto.imgs]
    assert urls and all(u.endswith(".png") for u in urls), urls
    _lock(at, "nv")  # the assisted arm: the model's answer, with its heat map where the study has one
    urls = [i.url for img in at.get("image") for i in img.proto.imgs]
    assert urls and all(u.endswith(".png") for u in urls), urls
