"""Reader-study routes of ``skinlesion serve --study-db URL`` (the rules live in :mod:`skinlesion.study.reading`).

- ``GET /v1/studies/{id}/next`` with ``Authorization: Bearer READER_TOKEN``: ``{"case", "image" (base64 PNG),
  "done": false, "phase", "progress", ...}`` (no image id, no truth; the model's answer only in the assisted
  phase, after the solo answer is locked) or ``{"done": true}``.
- ``POST /v1/studies/{id}/answers`` with JSON ``{"case", "diagnosis", "management", "confidence"[, "phase"]}``:
  201 and what the reader may now see (in the assisted arm the model's answer, for the revision posted
  with ``"phase": "assisted"``); 409 for an answer already locked.
- ``GET /v1/studies/{id}/progress`` with ``Authorization: Bearer ADMIN_KEY``: answers per reader.

A wrong token, or another study's, is 403. Reader tokens are the only credential here (the service's API
keys guard the analysis routes). Each route is a plain ``def``: FastAPI runs it in its thread pool, so a
database wait never blocks the event loop; every state lives in the database, so a restart resumes.
"""

from __future__ import annotations

import json
from typing import Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import SkinLesionError
from .refusals import ERRORS, Refusal

reader_bearer = HTTPBearer(auto_error=False, description="A reader token from `skinlesion study invite` (or the study's admin key).")


def _token(creds: Optional[HTTPAuthorizationCredentials]) -> str:
    if creds is None:
        raise Refusal(403, "Send your reader token as the header `Authorization: Bearer TOKEN`.", headers={"WWW-Authenticate": "Bearer"})
    return creds.credentials


def install(app: FastAPI, db: str | None) -> None:
    """Add the study routes to ``app`` when the service was started with ``--study-db`` (else nothing)."""
    if not db:
        return
    from ..study import reading
    from ..study.store import Store

    store = Store(db)
    router = APIRouter(tags=["reader studies"])

    def call(fn, *args):
        try:
            return fn(store, *args)
        except reading.StudyRefusal as exc:
            raise Refusal(exc.status, str(exc)) from None
        except SkinLesionError as exc:  # the database itself failed: nothing was written
            raise Refusal(503, str(exc), headers={"Retry-After": "1"}) from None

    @router.get("/v1/studies/{study_id}/next", summary="The reader's next case (or done)", responses=ERRORS)
    def next_case(study_id: str, creds: Optional[HTTPAuthorizationCredentials] = Depends(reader_bearer)):
        return call(reading.next_case, study_id, _token(creds))

    @router.post("/v1/studies/{study_id}/answers", summary="Lock one answer", status_code=201, responses=ERRORS)
    async def answers(study_id: str, request: Request, creds: Optional[HTTPAuthorizationCredentials] = Depends(reader_bearer)):
        token = _token(creds)
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Refusal(422, "The answer is not JSON; send {case, diagnosis, management, confidence}.") from None
        from starlette.concurrency import run_in_threadpool

        return JSONResponse(await run_in_threadpool(call, reading.submit, study_id, token, body), status_code=201)

    @router.get("/v1/studies/{study_id}/progress", summary="Answers per reader (admin key)", responses=ERRORS)
    def progress(study_id: str, creds: Optional[HTTPAuthorizationCredentials] = Depends(reader_bearer)):
        return call(reading.progress, study_id, _token(creds))

    app.include_router(router)
