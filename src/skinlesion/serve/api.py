"""The FastAPI application: thin routes over :class:`skinlesion.predict.Predictor`, one per worker process.

- ``GET /v1/health``: the process answers. ``GET /v1/ready``: the model is loaded, one warm-up
  analysis is done, and the service is not draining (503 otherwise, saying which).
- ``GET /v1/model``: the bundle's config (name, classes, preprocessing, every rule block it holds,
  metrics, versions), its hash, license, the service's limits and the not-a-medical-device notice.
- ``POST /v1/analyse``: images as multipart ``images`` files, optional ``age``, ``sex``,
  ``localization`` (each once for every image or once per image, in order); per image the row
  ``skinlesion predict`` writes; ``?heatmap=CLASS`` (or ``top``) adds the Grad-CAM map of one image.
- ``GET /metrics``: Prometheus. ``/docs``: the generated OpenAPI documentation.

``/v1/model`` and ``/v1/analyse`` need an API key when the service has ``--api-keys`` (401 without,
403 with a wrong one), checked before the body is read; the probes need none, and ``/metrics`` needs
one where ``--metrics key`` (the default on a non-loopback bind with keys), none with ``--metrics open``.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model

from .. import __version__
from ..classes import CODES
from ..errors import SkinLesionError
from ..predict import ROW_COLUMNS
from ..report import NOTICE
from . import refusals, study_routes
from .refusals import ERRORS, Refusal
from .forms import FORM, read_request
from .limits import Admission, BodyLimit, RateLimit
from .metrics import Metrics, Observe
from .protocol import quiet_emfile
from .service import Service, log
from .settings import Settings


# ---- response shapes (for the OpenAPI schema) ----

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


class Ready(BaseModel):
    ready: bool
    status: str
    detail: Optional[str] = None


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
        loop.set_exception_handler(quiet_emfile())  # one line every 10 s if descriptors run out, not one per accept
        service.install_drain(loop)
        loader = loop.run_in_executor(None, service.load)
        yield {Admission.LIFESPAN_KEY: service.gate}  # the connections' protocol admits analyses from their headers
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
    refusals.install(app)

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
        rule: Optional[str] = Query(
            None, description="The decision rule naming each image's class: most-probable or balanced (default: the model's own)."
        ),
        who: str = Depends(caller),
    ):
        service.accepting()
        unknown = sorted(set(request.query_params) - {"heatmap", "rule"})
        if unknown:
            raise Refusal(422, f"Unknown query parameter {unknown[0]!r}; the only ones are heatmap and rule.", field=unknown[0])
        if rule is not None:
            service.check_rule(rule)
        codes = service.predictor.labels.codes if service.predictor is not None else CODES
        if heatmap is not None and not settings.heatmaps:
            raise Refusal(422, "This service makes no heat maps (started with --no-heatmaps); leave out ?heatmap.", field="heatmap")
        if heatmap is not None and heatmap not in (*codes, "top"):
            raise Refusal(422, f"heatmap {heatmap!r} is not a class; use one of {', '.join(codes)} or top.", field="heatmap")

        async def work():
            async with service.paced.receive(request.receive) as receive:  # one body chunk parsed at a time (limits.Paced)
                uploads, meta = await read_request(Request(request.scope, receive), settings)
            if heatmap and len(uploads) > 1:
                raise Refusal(
                    422,
                    f"A heat map is made for one image; this request holds {len(uploads)} (send that image alone).",
                    field="heatmap",
                )
            return meta, await service.analyse(uploads, meta, heatmap, rule)

        # counted from its headers by the connection's protocol (a burst past the queue is refused there), else from here
        with service.admission(counted=bool(request.scope.get("state", {}).get(Admission.STATE))):
            try:
                async with asyncio.timeout(settings.timeout):
                    meta, result = await service.until_stopped(work())
            except SkinLesionError as exc:  # the model itself failed (e.g. non-finite probabilities): its sentence, as a 500
                raise Refusal(500, str(exc)) from None
            except TimeoutError:
                raise Refusal(
                    503,
                    f"The request took longer than the service's {settings.timeout:g} s limit and was abandoned; "
                    "send fewer images or retry.",
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

    access = settings.metrics_access()
    if access != "off":
        guard = [Depends(caller)] if access == "key" else []

        @app.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=guard)
        async def metrics():
            data, kind = service.metrics.render()
            return Response(data, media_type=kind)

    study_routes.install(app, settings.study_db)  # /v1/studies/... with --study-db (skinlesion.serve.study_routes)
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
