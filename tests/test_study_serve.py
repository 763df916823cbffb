"""The reader-study REST routes on a real ``skinlesion serve --study-db`` process on loopback: isolation, no early
truth, the assisted revision, and resuming after the service is killed."""

from __future__ import annotations

import base64
import io
import os
import signal

import httpx
import pytest
from PIL import Image

from skinlesion.study.create import invite
from skinlesion.study.store import Answer, Store

from .study_support import synthetic_study
from .test_serve import running_service

pytestmark = pytest.mark.slow


class study_service(running_service):
    """``skinlesion serve --study-db``, entered once it answers: the study routes do not wait for the model."""

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False


READER_KEYS = {"case", "image", "image_type", "done", "phase", "arm", "progress", "diagnoses", "management"}


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_rest_reading_isolation_revision_and_resume_after_a_kill(tmp_path):
    db = tmp_path / "study.sqlite"
    store = Store(db)
    truths = ["mel", "nv", "bcc", "bkl", "nv"]
    sid, admin = synthetic_study(store, truths, ["mel", "nv", "nv", "bkl", "nv"], [0.9, 0.1, 0.4, 0.2, 0.1], arms=("solo", "assisted"))
    other, _ = synthetic_study(store, ["nv"], ["nv"], [0.1])
    (_, _, solo_tok), (_, _, tok) = invite(store, sid, 2)  # arms alternate: solo, assisted
    ((_, _, other_tok),) = invite(store, other, 1)
    seen = []
    with study_service(tmp_path, "--study-db", db) as s:
        url = f"{s.url}/v1/studies/{sid}"
        for headers in ({}, _auth("not-a-token"), _auth(other_tok), _auth(admin)):
            r = httpx.get(f"{url}/next", headers=headers)
            assert r.status_code == 403 and r.json()["detail"].endswith(".")
        r = httpx.post(
            f"{url}/answers", headers=_auth(other_tok), json={"case": 1, "diagnosis": "nv", "management": "reassure", "confidence": 3}
        )
        assert r.status_code == 403
        for _ in range(2):
            r = httpx.get(f"{url}/next", headers=_auth(tok))
            assert r.status_code == 200
            case = r.json()
            assert set(case) == READER_KEYS and case["phase"] == "solo"  # no image id, no truth, no model answer
            assert Image.open(io.BytesIO(base64.b64decode(case["image"]))).format == "PNG"
            answer = {"case": case["case"], "diagnosis": "nv", "management": "follow up", "confidence": 2}
            r = httpx.post(f"{url}/answers", headers=_auth(tok), json=answer)
            assert r.status_code == 201, r.text
            model = r.json()["model"]  # the assisted arm: now the model's answer, for the revision
            assert "truth" not in r.json() and model["diagnosis"] in truths and model["heatmap"]
            assert httpx.post(f"{url}/answers", headers=_auth(tok), json=answer).status_code == 409  # locked
            again = httpx.get(f"{url}/next", headers=_auth(tok)).json()
            assert again["case"] == case["case"] and again["phase"] == "assisted" and again["model"] == model
            r = httpx.post(f"{url}/answers", headers=_auth(tok), json={**answer, "diagnosis": model["diagnosis"], "phase": "assisted"})
            assert r.status_code == 201
            seen.append(case["case"])
        r = httpx.post(f"{url}/answers", headers=_auth(solo_tok), json={"case": 1, "diagnosis": "nv", "management": "x", "confidence": 3})
        assert r.status_code == 422 and "management 'x'" in r.json()["detail"]
        r = httpx.post(f"{url}/answers", headers=_auth(solo_tok), content=b"{not json")
        assert r.status_code == 422
        assert httpx.get(f"{url}/next", headers=_auth(solo_tok)).json()["progress"]["finished"] == 0  # isolated
        prog = httpx.get(f"{url}/progress", headers=_auth(admin)).json()
        assert [r["answers"] for r in prog["readers"]] == [0, 4]
        os.killpg(s.proc.pid, signal.SIGKILL)  # killed mid-study: nothing locked may be lost
        s.proc.wait()
    with study_service(tmp_path, "--study-db", db) as s:
        nxt = httpx.get(f"{s.url}/v1/studies/{sid}/next", headers=_auth(tok)).json()
        assert nxt["phase"] == "solo" and nxt["case"] not in seen and nxt["progress"] == {"finished": 2, "total": 5}
    with store.session() as sess:
        kept = sorted((a.case_id, a.phase) for a in sess.query(Answer).all())
    assert len(kept) == 4 and {p for _, p in kept} == {"solo", "assisted"}


def test_serve_refuses_a_bad_study_db_before_starting(tmp_path, run_cli):
    code, _, err = run_cli("serve", "--study-db", str(tmp_path / "no" / "such.sqlite"))
    assert code == 2 and "does not exist; create it or choose another path" in err
