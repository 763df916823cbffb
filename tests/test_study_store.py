"""The study store on SQLite and on a real PostgreSQL server: migrations, transactions, reading rules."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import inspect, text

from skinlesion.errors import SkinLesionError
from skinlesion.study import migrate
from skinlesion.study.reading import StudyRefusal, next_case, submit
from skinlesion.study.store import Answer, Store, Study

from .study_support import CODES, pg_server, pg_url, synthetic_study  # noqa: F401 (fixtures)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "study.sqlite")
    return request.getfixturevalue("pg_url")


def _answer(case, dx="nv", mgmt="reassure", conf=3, **kw):
    return {"case": case, "diagnosis": dx, "management": mgmt, "confidence": conf, **kw}


def test_migrates_an_empty_database_to_head(db):
    store = Store(db)
    assert migrate.current_revision(store) == migrate.HEAD_REVISION
    insp = inspect(store.engine)
    assert {"studies", "cases", "readers", "answers"} <= set(insp.get_table_names())
    assert "time_spent_s" in {c["name"] for c in insp.get_columns("answers")}
    assert "ix_answers_study" in {i["name"] for i in insp.get_indexes("answers")}
    Store(db)  # opening again is a no-op
    assert migrate.current_revision(store) == migrate.HEAD_REVISION


def test_migrates_the_previous_schema_keeping_its_rows(db):
    store = Store(db, migrate=False)
    assert migrate.upgrade(store, "0001") == "0001"
    assert "time_spent_s" not in {c["name"] for c in inspect(store.engine).get_columns("answers")}
    with store.engine.begin() as conn:  # a study written by the previous version
        conn.execute(
            text(
                "INSERT INTO studies (id, created_at, name, model, model_hash, labels, malignant, arms, education, admin_key_hash, "
                "model_answers, seed) VALUES ('old1', CURRENT_TIMESTAMP, 'old', 'default', '', :labels, '[]', '[\"solo\"]', false, 'x', '', 0)"
            ),
            {"labels": json.dumps(CODES)},
        )
    store.close()
    store = Store(db)
    assert migrate.current_revision(store) == "0002"
    with store.session() as s:
        assert s.get(Study, "old1").labels == CODES
    assert "shown_at" in {c["name"] for c in inspect(store.engine).get_columns("readers")}


def test_a_newer_schema_is_refused_in_one_sentence(db):
    store = Store(db)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(SkinLesionError, match=r"schema revision 0099, newer than this skinlesion knows \(0002\); upgrade skinlesion"):
        Store(db)


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_bad_database_arguments_are_one_sentence(tmp_path):
    with pytest.raises(SkinLesionError, match="does not exist; create it"):
        Store(tmp_path / "no" / "such" / "s.sqlite")
    with pytest.raises(SkinLesionError, match="not SQLite or PostgreSQL"):
        Store("mysql://u@h/db")


def test_a_failed_write_leaves_nothing(db):
    store = Store(db)
    sid, _ = synthetic_study(store, ["nv", "mel"], ["nv", "nv"], [0.1, 0.2])
    from skinlesion.study.create import invite

    ((_, _, token),) = invite(store, sid, 1)
    with pytest.raises(RuntimeError):
        with store.session() as s:
            s.add(Answer(study_id=sid, reader_id=1, case_id=1, phase="solo", diagnosis="nv", management="reassure", confidence=3))
            s.flush()
            raise RuntimeError("killed mid-transaction")
    with store.session() as s:
        assert s.query(Answer).count() == 0


def test_reading_rules_isolation_and_no_early_truth(db):
    from skinlesion.study.create import invite

    store = Store(db)
    sid, _ = synthetic_study(store, ["nv", "mel", "bcc"], ["nv", "mel", "nv"], [0.1, 0.9, 0.3])
    other, _ = synthetic_study(store, ["nv"], ["nv"], [0.1])
    (_, _, a), (_, _, b) = invite(store, sid, 2, arm="solo")
    ((_, _, c),) = invite(store, other, 1)
    for bad in (None, "nonsense", c):
        with pytest.raises(StudyRefusal) as exc:
            next_case(store, sid, bad)
        assert exc.value.status == 403
    with pytest.raises(StudyRefusal) as exc:
        submit(store, sid, c, _answer(1))
    assert exc.value.status == 403
    first = next_case(store, sid, a)
    blob = json.dumps(first)
    for secret in ("IMG_", "truth", "model", 'mel"', "probabilities"):
        assert secret not in blob.replace('"mel", ', "").replace('"diagnoses"', ""), secret
    assert first["done"] is False and first["phase"] == "solo" and first["progress"] == {"finished": 0, "total": 3}
    locked = submit(store, sid, a, _answer(first["case"]))
    assert locked == {"locked": True, "case": first["case"], "phase": "solo"}  # no truth, no model answer (solo arm, research)
    with pytest.raises(StudyRefusal) as exc:
        submit(store, sid, a, _answer(first["case"], dx="mel"))
    assert exc.value.status == 409
    assert next_case(store, sid, b)["progress"]["finished"] == 0  # b sees nothing of a's answers
    for bad, status in ((_answer(99), 422), (_answer(1, dx="xyz"), 422), (_answer(1, conf=6), 422), (_answer(1, mgmt="biopsy"), 422)):
        with pytest.raises(StudyRefusal) as exc:
            submit(store, sid, b, bad)
        assert exc.value.status == status
    seen = {first["case"]}
    for _ in range(2):
        nxt = next_case(store, sid, a)
        assert nxt["case"] not in seen
        seen.add(nxt["case"])
        submit(store, sid, a, _answer(nxt["case"]))
    assert next_case(store, sid, a) == {"done": True, "progress": {"finished": 3, "total": 3}, "arm": "solo"}
    with store.session() as s:
        spent = [x.time_spent_s for x in s.query(Answer).all()]
    assert len(spent) == 3 and all(t is not None and t >= 0 for t in spent)


def test_assisted_arm_shows_the_model_after_the_solo_answer(db):
    from skinlesion.study.create import invite

    store = Store(db)
    sid, _ = synthetic_study(store, ["mel", "nv"], ["mel", "nv"], [0.9, 0.1], arms=("solo", "assisted"), education=True)
    ((_, arm, tok),) = invite(store, sid, 1, arm="assisted")
    assert arm == "assisted"
    case = next_case(store, sid, tok)
    assert case["phase"] == "solo" and "model" not in case
    with pytest.raises(StudyRefusal, match="solo answer"):
        submit(store, sid, tok, _answer(case["case"], phase="assisted"))
    locked = submit(store, sid, tok, _answer(case["case"], dx="nv"))
    assert "truth" not in locked  # education: truth only once the case is finished (after the revision)
    assert locked["model"]["diagnosis"] in ("mel", "nv") and set(locked["model"]["probabilities"]) == set(CODES)
    again = next_case(store, sid, tok)
    assert again["case"] == case["case"] and again["phase"] == "assisted" and again["solo_answer"]["diagnosis"] == "nv"
    assert again["model"]["heatmap"]
    revised = submit(store, sid, tok, _answer(case["case"], dx=locked["model"]["diagnosis"], phase="assisted"))
    assert revised["truth"] == locked["model"]["diagnosis"]  # the model is right on every case of this study
    assert revised["score"] == {"cases": 1, "you_correct": 1, "model_correct": 1}
    with store.session() as s:
        assert sorted(a.phase for a in s.query(Answer).all()) == ["assisted", "solo"]  # both answers kept


def test_one_answer_sent_at_once_from_many_threads_is_locked_once(db):
    from skinlesion.study.create import invite

    store = Store(db)
    sid, _ = synthetic_study(store, ["nv", "mel"], ["nv", "mel"], [0.1, 0.9])
    ((_, _, tok),) = invite(store, sid, 1, arm="solo")
    case = next_case(store, sid, tok)["case"]
    results, barrier = [], threading.Barrier(8)

    def send():
        barrier.wait()
        try:
            submit(store, sid, tok, _answer(case))
            results.append(201)
        except StudyRefusal as exc:
            results.append(exc.status)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [201] + [409] * 7
    with store.session() as s:
        assert s.query(Answer).count() == 1


def test_a_postgresql_connection_dropped_while_idle_is_replaced(request, monkeypatch):
    """No ping per transaction: a pooled connection idle past PING_AFTER_S is checked first, and one the server
    dropped is replaced, so the reader's request is served rather than failed."""
    import psycopg

    url = request.getfixturevalue("pg_url")
    from skinlesion.study import store as store_module
    from skinlesion.study.store import Reader

    store = Store(url)
    with store.session() as s:
        assert s.query(Reader).count() == 0
    pinged = []
    real_ping = store_module._ping_if_idle

    def counting(dbapi_conn, record, proxy):
        pinged.append(record.info.get("idle_since") is not None)
        return real_ping(dbapi_conn, record, proxy)

    from sqlalchemy import event

    event.remove(store.engine, "checkout", real_ping)
    event.listen(store.engine, "checkout", counting)
    monkeypatch.setattr(store_module, "PING_AFTER_S", 0.0)  # every returned connection counts as idle
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        for _ in range(200):  # the server has dropped the pooled connection (a state, bounded)
            if admin.execute(others).fetchone()[0] == 0:
                break
            threading.Event().wait(0.05)
        assert admin.execute(others).fetchone()[0] == 0
    with store.session() as s:  # the dead connection is pinged, dropped and replaced: no error
        assert s.query(Reader).count() == 0
    assert pinged and pinged[0]
    store.close()
