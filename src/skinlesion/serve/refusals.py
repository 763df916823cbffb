"""Every refusal is one sentence: JSON ``{"detail": sentence}`` (422s also name the ``field``), never a traceback.

:class:`Refusal` is what the routes raise; :func:`install` makes Starlette's own errors (404, 405), FastAPI's
validation errors and anything unforeseen (500, logged with its traceback on the server) answer the same way.
"""

from __future__ import annotations

import logging
from typing import Optional

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one in every worker


class Refusal(HTTPException):
    """A refused request: its status, one sentence, and extra JSON fields (``field``, ``images``)."""

    def __init__(self, status: int, sentence: str, *, headers: dict | None = None, **extra):
        super().__init__(status, sentence, headers=headers)
        self.extra = extra


class Problem(BaseModel):
    detail: str
    field: Optional[str] = None


ERRORS = {s: {"model": Problem} for s in (400, 401, 403, 413, 422, 429, 503)}


async def _http_error(request: Request, exc: HTTPException):
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"There is no {request.url.path} here; the endpoints are listed at /docs."
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs for its method."
    body = {"detail": str(detail), **getattr(exc, "extra", {})}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError):
    err = (exc.errors() or [{}])[0]
    loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "body", "path", "header")]
    field = loc[-1] if loc else "request"
    msg = str(err.get("msg", "is invalid")).rstrip(".")
    return JSONResponse(
        {"detail": f"{field}: {msg[:1].lower() + msg[1:]}; see /docs for the request format.", "field": field}, status_code=422
    )


async def _internal_error(request: Request, exc: Exception):
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": "The service failed on this request (an internal error, logged on the server); retry, and report it if it persists."},
        status_code=500,
    )


def install(app) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
