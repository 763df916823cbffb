"""The FastAPI application: thin routes over :class:`skinlesion.predict.Predictor`, one per worker process.

- ``GET /v1/health``: the process answers. ``GET /v1/ready``: the model is loaded, one warm-up
  analysis is done, and the service is not draining (503 otherwise, saying which).
- ``GET /v1/model``: the bundle's config (name, classes, preprocessing, every rule block it holds,
  metrics, versions), its hash, license, the service's limits and the not-a-medical-device notice.
- ``POST /v1/analyse``: images as multipart ``images`` files, optional ``age``, ``sex``,
  ``localization`` (each once for every image or once per image, in order). Each image's answer is
  the row ``skinlesion predict`` writes (:func:`skinlesion.predict.predict_files` makes both), so
  the two never differ; ``?heatmap=CLASS`` (or ``top``) adds the Grad-CAM map of one image.
- ``GET /metrics``: Prometheus. ``/docs``: the generated OpenAPI documentation.

Analyses run in a bounded thread pool (``--concurrency``, each with its share of the cores as
intra-op threads), never on the event loop, so probes stay quick under load. Every refusal is JSON
``{"detail": one sentence}`` (422s also name the ``field``), never a traceback.

SIGTERM: ``/v1/ready`` turns false and new analyses are refused (503, ``Retry-After``) at once;
requests in flight finish (for at most ``--grace`` seconds); then uvicorn closes the socket and exits.

Test hook (inert unless set): with ``SKINLESION_SERVE_TEST_HOLD=DIR`` an upload named ``hold-*``
waits before its analysis until the file ``DIR/<its name>.go`` exists (or its request is abandoned),
so tests can hold a request in flight without timing anything.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import __version__
from ..classes import CODES, DIAGNOSES
from ..errors import SkinLesionError
from ..posthoc import LOCALIZATIONS, META_FIELDS, SEXES
from ..predict import ROW_COLUMNS
from ..report import NOTICE
from .keys import KeyRing
from .limits import BodyLimit, RateLimit
from .metrics import Metrics, Observe
from .settings import Settings

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one in every worker
HOLD_ENV = "SKINLESION_SERVE_TEST_HOLD"
SHIPPED_LICENSE = "CC BY-NC-SA 4.0 (weights trained on HAM10000: non-commercial use, share alike)"


class Refusal(HTTPException):
    """A refused request: its status, one sentence, and extra JSON fields (``field``, ``images``)."""

    def __init__(self, status: int, sentence: str, *, headers: dict | None = None, **extra):
        super().__init__(status, sentence, headers=headers)
        self.extra = extra


class Upload(bytes):
    """An uploaded file's bytes; ``str()`` is its file name, which is what ``predict_files`` names a row by."""

    def __new__(cls, data: bytes, name: str):
        obj = super().__new__(cls, data)
        obj.name = name
        return obj

    def __str__(self) -> str:
        return self.name


# ---- one worker's state ----------------------------------------------------------------------


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.keys = KeyRing(settings.api_keys) if settings.api_keys else None
        self.rate = RateLimit(settings.rate_per_second) if settings.rate else None
        self.pool = ThreadPoolExecutor(settings.analyses_at_once(), thread_name_prefix="analysis")
        self.threads = settings.threads()
        self.predictor = None
        self.info: dict | None = None
        self.ready = self.draining = False
        self.load_error: str | None = None
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._waiting = 0
        self._lock = threading.Lock()
        self._torch_threads = False

    # requests in flight (all but the probes), counted on the event loop by metrics.Observe
    def enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def load(self) -> None:
        """Load the model and run one warm-up analysis (the first one pays imports and allocations)."""
        import numpy as np
        from PIL import Image

        from ..predict import Predictor

        try:
            t0 = time.perf_counter()
            self.predictor = Predictor(self.settings.model, threads=self.threads)
            buf = io.BytesIO()
            pixels = np.random.default_rng(0).integers(0, 256, (450, 600, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buf, "JPEG")
            self.predictor.predict(buf.getvalue(), "warm-up")
            self.info = model_info(self.predictor, self.settings)
            self.ready = not self.draining
            self.metrics.ready.set(1 if self.ready else 0)
            log.info(
                "model %s (%s) loaded and warm in %.1f s on %s; %d analyses at once, %d thread(s) each",
                self.predictor.config.name,
                self.predictor.model_hash,
                time.perf_counter() - t0,
                self.predictor.backend,
                self.settings.analyses_at_once(),
                self.threads,
            )
        except Exception as exc:  # the CLI checked the model; anything here is logged and keeps the service unready
            self.load_error = (
                str(exc) if isinstance(exc, SkinLesionError) else f"the model could not be loaded ({type(exc).__name__}: {exc})"
            )
            log.error("not ready: %s", self.load_error, exc_info=not isinstance(exc, SkinLesionError))

    # ---- SIGTERM: drain, then let the server stop ----
    def install_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def pass_on():
            signal.signal(signal.SIGTERM, previous)
            signal.raise_signal(signal.SIGTERM)  # uvicorn's own handler: close the socket, finish, exit

        def on_term(sig, frame):
            if self.draining:  # a second SIGTERM: stop draining, stop now
                pass_on()
                return
            self.draining, self.ready = True, False
            self.metrics.ready.set(0)
            log.info("SIGTERM: draining (%d request(s) in flight, at most %g s)", self.in_flight, self.settings.grace)
            loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(pass_on)))

        signal.signal(signal.SIGTERM, on_term)

    async def _drain(self, pass_on) -> None:
        try:
            await asyncio.wait_for(self.idle.wait(), self.settings.grace)
        except asyncio.TimeoutError:
            log.warning("--grace %g s is over with %d request(s) still in flight; stopping", self.settings.grace, self.in_flight)
        pass_on()

    # ---- analyses ----
    def accepting(self) -> None:
        if self.draining:
            raise Refusal(
                503,
                "The service is shutting down; send the request to another replica or retry shortly.",
                headers={"Retry-After": "2", "Connection": "close"},
            )
        if self.load_error:
            raise Refusal(503, f"The service has no model: {self.load_error}", headers={"Retry-After": "30"})
        if not self.ready:
            raise Refusal(503, "The model is still loading; retry in a few seconds.", headers={"Retry-After": "5"})
        if self._waiting >= self.settings.max_queue + self.settings.analyses_at_once():
            raise Refusal(
                503, f"The service is busy ({self._waiting} analyses waiting); retry in a few seconds.", headers={"Retry-After": "2"}
            )

    async def analyse(self, uploads: list[Upload], meta: dict | None, heat: str | None):
        abandoned = threading.Event()
        with self._lock:
            self._waiting += 1
        self.metrics.queued.inc()
        future = asyncio.get_running_loop().run_in_executor(self.pool, self._job, uploads, meta, heat, abandoned)
        try:
            return await future
        except asyncio.CancelledError:  # the request's timeout (or its client) gave up: do not start, or drop the answer
            abandoned.set()
            raise

    def _job(self, uploads, meta, heat, abandoned):
        with self._lock:
            self._waiting -= 1
        self.metrics.queued.dec()
        if abandoned.is_set():
            self.metrics.abandoned.inc()
            return None
        from ..predict import predict_files

        self.metrics.in_progress.inc()
        t0 = time.perf_counter()
        try:
            _test_hold(uploads, abandoned)
            if abandoned.is_set():
                self.metrics.abandoned.inc()
                return None
            rows = predict_files(self.predictor, uploads, batch_size=len(uploads), meta=meta)
            rows = [{c: r.get(c) for c in ROW_COLUMNS} for r in rows]  # the CSV's columns, in its order
            heatmap = self._heatmap(uploads[0], rows[0], heat) if heat and not rows[0]["error"] else None
            if abandoned.is_set():
                self.metrics.abandoned.inc()
            return rows, heatmap
        finally:
            self.metrics.in_progress.dec()
            self.metrics.analysis.observe(time.perf_counter() - t0)

    def _heatmap(self, upload: Upload, row: dict, target: str) -> dict:
        import numpy as np
        from PIL import Image

        from ..explain import COLOURMAP, METHOD, overlay
        from ..intake import open_image

        code = row["top_class"] if target == "top" else target
        if not self._torch_threads:
            import torch

            torch.set_num_threads(self.threads)
            self._torch_threads = True
        image = open_image(upload, str(upload)).image
        heat = self.predictor.explain(image, target=CODES.index(code))

        def png(img) -> str:
            buf = io.BytesIO()
            img.save(buf, "PNG")
            return base64.b64encode(buf.getvalue()).decode()

        return {
            "image": row["image"],
            "class": code,
            "method": METHOD,
            "heatmap_png": png(Image.fromarray((heat * 255).astype(np.uint8), "L")),
            "overlay_png": png(overlay(image, heat)),
            "note": f"heatmap_png: the map at the model's input size, 0 (least evidence) to 255 (most); "
            f"overlay_png: coloured ({COLOURMAP}) over the image at its own size.",
        }


def _test_hold(uploads, abandoned: threading.Event) -> None:
    folder = os.environ.get(HOLD_ENV)
    if not folder:
        return
    for u in uploads:
        if u.name.startswith("hold-"):
            go = Path(folder) / f"{u.name}.go"
            while not go.exists() and not abandoned.wait(0.02):
                pass


# ---- what the model is -----------------------------------------------------------------------

_NOT_RULES = {
    "format_version",
    "name",
    "preprocess",
    "members",
    "classes",
    "combine",
    "temperature",
    "class_bias",
    "tta",
    "low_res",
    "ood",
    "metadata",
    "metrics",
    "train",
    "created_with",
}


def model_info(predictor, settings: Settings) -> dict:
    """Everything a caller needs to know about the model; rule blocks (refer, conformal, tier, and any
    other block a bundle holds) are passed on as the bundle stores them."""
    from ..bundle import bundle_hash, default_model_path

    cfg = predictor.config
    d = cfg.to_dict()
    shipped = Path(predictor.model_path).resolve() == default_model_path().resolve()
    license_ = d.get("license") or (
        SHIPPED_LICENSE if shipped else "not recorded in the bundle (a model trained on HAM10000 inherits its CC BY-NC-SA 4.0 terms)"
    )
    ood = dict(cfg.ood or {})
    return {
        "name": cfg.name,
        "version": (cfg.created_with or {}).get("skinlesion"),
        "model_hash": predictor.model_hash,
        "bundle_sha256": bundle_hash(predictor.model_path),
        "backend": predictor.backend,
        "classes": [{"code": x.code, "name": x.name, "malignant": x.malignant} for x in DIAGNOSES if x.code in cfg.classes],
        "columns": list(ROW_COLUMNS),
        "input": {
            "preprocess": cfg.preprocess,
            "tta": cfg.tta,
            "formats": "JPEG or PNG (anything Pillow reads); EXIF rotation applied",
            "patient_data": {
                "used": predictor.uses_metadata,
                "fields": list(META_FIELDS),
                "sex": list(SEXES),
                "localization": list(LOCALIZATIONS),
                "age": "0-120",
            },
        },
        "rules": {k: v for k, v in d.items() if k not in _NOT_RULES},
        "calibration": {"temperature": cfg.temperature, "class_bias": cfg.class_bias},
        "ood": {k: ood[k] for k in ("method", "threshold", "percentile") if k in ood} or None,
        "members": [{"backbone": m.backbone, "fold": m.fold, "seed": m.seed} for m in cfg.members],
        "metrics": cfg.metrics,
        "created_with": cfg.created_with,
        "license": license_,
        "notice": NOTICE,
        "service": {
            "skinlesion": __version__,
            "max_images": settings.max_images,
            "max_mb": settings.max_mb,
            "timeout_s": settings.timeout,
            "rate": settings.rate,
        },
    }


# ---- request and response shapes (for the OpenAPI schema) -------------------------------------

ImageResult = create_model(
    "ImageResult", __config__=ConfigDict(extra="allow", protected_namespaces=()), **{c: (Optional[Any], None) for c in ROW_COLUMNS}
)


class Heatmap(BaseModel):
    image: str
    class_: str = Field(alias="class")
    method: str
    heatmap_png: str
    overlay_png: str
    note: str


class Analysis(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_hash: str
    images: list[ImageResult]
    warnings: list[str]
    notice: str
    heatmap: Optional[Heatmap] = None


class Problem(BaseModel):
    detail: str
    field: Optional[str] = None


class Ready(BaseModel):
    ready: bool
    status: str
    detail: Optional[str] = None


ERRORS = {s: {"model": Problem} for s in (400, 401, 403, 413, 422, 429, 503)}
FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "JPEG or PNG files"},
                        "age": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "years, 0-120; once for all images or once per image",
                        },
                        "sex": {"type": "array", "items": {"type": "string", "enum": [*SEXES, ""]}},
                        "localization": {
                            "type": "array",
                            "items": {"type": "string", "enum": [*LOCALIZATIONS, ""]},
                            "description": "body site",
                        },
                    },
                }
            }
        },
    }
}


# ---- the application -----------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="An API key from `skinlesion serve --new-key`, as `Authorization: Bearer KEY`.")


async def caller(request: Request, creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> str:
    """Who is calling (401 without a key, 403 with a wrong one), and whether their rate allows it (429)."""
    service: Service = request.app.state.service
    who = "anonymous"
    if service.keys is not None:
        if "authorization" not in request.headers:
            raise Refusal(
                401,
                "This service needs an API key; send it as the header `Authorization: Bearer KEY`.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if creds is None:
            raise Refusal(401, "The Authorization header must read `Bearer KEY`.", headers={"WWW-Authenticate": "Bearer"})
        try:
            verdict = service.keys.check(creds.credentials)
        except SkinLesionError as exc:
            log.error("%s", exc)
            raise Refusal(503, "The service cannot read its API key file; tell its operator.") from None
        if not verdict.ok:
            raise Refusal(403, "This API key is not valid here (unknown or revoked); ask the service's operator for one.")
        who = verdict.key_id
    if service.rate is not None:
        wait = service.rate.take(who)
        if wait:
            after = RateLimit.retry_after(wait)
            raise Refusal(
                429,
                f"Too many requests with this key (the limit is {service.settings.rate}); retry in {after} s.",
                headers={"Retry-After": after},
            )
    return who


def create_app(settings: Settings) -> FastAPI:
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        service.install_drain(loop)
        loader = loop.run_in_executor(None, service.load)
        yield
        service.pool.shutdown(wait=False, cancel_futures=True)
        if not loader.done():
            log.info("stopping before the model finished loading")
        Metrics.process_exited()

    app = FastAPI(
        title="skinlesion",
        version=__version__,
        summary="Skin-lesion image analysis (HAM10000's seven diagnoses). " + NOTICE,
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.service = service
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/v1/health", summary="The process is alive")
    async def health():
        return {"status": "alive"}

    @app.get(
        "/v1/ready",
        summary="The model is loaded and warm, and the service is not draining",
        response_model=Ready,
        responses={503: {"model": Ready}},
    )
    async def ready():
        if service.ready:
            return {"ready": True, "status": "ready"}
        status = "draining" if service.draining else "failed" if service.load_error else "loading"
        return JSONResponse({"ready": False, "status": status, "detail": service.load_error}, status_code=503)

    @app.get("/v1/model", summary="The model: classes, input, rules, metrics, hash, license, notice", responses=ERRORS)
    async def model(who: str = Depends(caller)) -> dict[str, Any]:
        service.accepting()
        return service.info

    @app.post("/v1/analyse", summary="Analyse one or more images", response_model=Analysis, responses=ERRORS, openapi_extra=FORM)
    async def analyse(
        request: Request,
        heatmap: Optional[str] = Query(None, description="A class code (or `top`): add its Grad-CAM heat map (one image only)."),
        who: str = Depends(caller),
    ):
        service.accepting()
        unknown = sorted(set(request.query_params) - {"heatmap"})
        if unknown:
            raise Refusal(422, f"Unknown query parameter {unknown[0]!r}; the only one is heatmap.", field=unknown[0])
        if heatmap is not None and heatmap not in (*CODES, "top"):
            raise Refusal(422, f"heatmap {heatmap!r} is not a class; use one of {', '.join(CODES)} or top.", field="heatmap")
        try:
            async with asyncio.timeout(settings.timeout):
                uploads, meta = await read_request(request, settings)
                if heatmap and len(uploads) > 1:
                    raise Refusal(
                        422,
                        f"A heat map is made for one image; this request holds {len(uploads)} (send that image alone).",
                        field="heatmap",
                    )
                result = await service.analyse(uploads, meta, heatmap)
        except TimeoutError:
            raise Refusal(
                503,
                f"The request took longer than the service's {settings.timeout:g} s limit and was abandoned; send fewer images or retry.",
                headers={"Retry-After": "5"},
            ) from None
        rows, heat = result
        service.metrics.images.labels("analysed").inc(sum(1 for r in rows if not r["error"]))
        service.metrics.images.labels("refused").inc(sum(1 for r in rows if r["error"]))
        notes = []
        if meta and not service.predictor.uses_metadata:
            notes.append("this model does not use patient data; age, sex and localization are ignored.")
        body = {"model_hash": service.predictor.model_hash, "images": rows, "warnings": notes, "notice": NOTICE}
        if heat:
            body["heatmap"] = heat
        if all(r["error"] for r in rows):
            detail = rows[0]["error"] if len(rows) == 1 else f"None of the {len(rows)} images could be analysed; see each image's error."
            return JSONResponse({"detail": detail, **body}, status_code=422)
        return JSONResponse(body)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        data, kind = service.metrics.render()
        return Response(data, media_type=kind)

    app.add_middleware(BodyLimit, limit=settings.max_bytes)
    app.add_middleware(Observe, metrics=service.metrics, service=service)
    if settings.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors, allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]
        )
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn's factory (``skinlesion.serve.api:create_app_from_env``): the settings come from the environment."""
    return create_app(Settings.from_env())


# ---- reading a request -----------------------------------------------------------------------


async def read_request(request: Request, settings: Settings) -> tuple[list[Upload], dict | None]:
    """The uploads and their patient data (image stem -> fields), or a refusal naming the field."""
    n = settings.max_images
    try:
        form = await request.form(max_files=n, max_fields=len(META_FIELDS) * n + 8, max_part_size=64 * 1024)
    except HTTPException as exc:
        if exc.status_code != 400:
            raise
        if str(exc.detail).startswith("Too many files"):
            raise Refusal(422, f"This request holds more than {n} images; send at most {n} per request.", field="images") from None
        if str(exc.detail).startswith("Too many fields"):
            raise Refusal(422, "This request holds too many fields; send at most one age, sex and localization per image.") from None
        raise Refusal(
            400, f"The request body is not valid multipart form data ({exc.detail}); send the images as files named images."
        ) from None
    try:
        uploads, fields = [], {f: [] for f in META_FIELDS}
        for key, value in form.multi_items():
            if key == "images":
                if not isinstance(value, UploadFile):
                    raise Refusal(422, "images must be files (multipart file parts), not text.", field="images")
                uploads.append(Upload(await value.read(), value.filename or f"image {len(uploads) + 1}"))
            elif key in fields:
                if isinstance(value, UploadFile):
                    raise Refusal(422, f"{key} must be a text field, not a file.", field=key)
                fields[key].append(value)
            else:
                raise Refusal(422, f"Unknown field {key!r}; send images (files) and optionally age, sex and localization.", field=key)
    finally:
        await form.close()
    if not uploads:
        raise Refusal(
            422,
            "Send one or more images as multipart/form-data files named images (age, sex and localization are optional).",
            field="images",
        )
    return uploads, patient_data(uploads, fields)


def patient_data(uploads: list[Upload], fields: dict[str, list[str]]) -> dict | None:
    """Each field once (every image) or once per image; checked with the same rules and sentences as ``predict --meta``."""
    from ..posthoc import encode_metadata

    n = len(uploads)
    given = {k: v for k, v in fields.items() if v}
    if not given:
        return None
    for k, v in given.items():
        if len(v) not in (1, n):
            raise Refusal(
                422, f"{k} is given {len(v)} times for {n} images; give it once (for every image) or once per image, in order.", field=k
            )
    per_image = [{k: (v[0] if len(v) == 1 else v[i]) for k, v in given.items()} for i in range(n)]
    for up, d in zip(uploads, per_image):
        try:
            encode_metadata([d])
        except ValueError as exc:
            where = f" for {up.name}" if n > 1 else ""
            raise Refusal(422, f"Patient data{where}: {exc}; leave a field empty when it is unknown.", field=str(exc).split()[0]) from None
    meta = {}
    for up, d in zip(uploads, per_image):
        stem = Path(up.name).stem
        if meta.get(stem, d) != d:
            raise Refusal(422, f"Two images are named {stem} with different patient data; give them distinct file names.", field="images")
        meta[stem] = d
    return meta


# ---- every error is one sentence ----------------------------------------------------------------


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
