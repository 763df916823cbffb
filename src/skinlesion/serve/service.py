"""One worker's state: the predictor, the bounded analysis pool, readiness, and draining on SIGTERM.

Analyses run in a thread pool of ``--concurrency`` threads (each with its share of the cores as
intra-op threads), never on the event loop, so probes stay quick under load. A request is admitted
(counted, :class:`~.limits.Admission`) when its headers are parsed, before its body is read: past
``--concurrency + --max-queue`` admitted requests a new one is answered 503 with ``Retry-After`` from
its headers, in the same step of the event loop. An analysis whose request
timed out is abandoned: not started if it still waits; if it runs, stopped at its next check: between
images, between the blocks of an image's decode, between the steps that reduce it, between a batch's
stages (network, rules, photo quality) and the heat map's members (an ONNX Runtime call cannot be
interrupted midway). Images are decoded one at a time and each is reduced at once to what the
analysis keeps (for the shipped model a 28x28 image, its size and its chroma), so the full-size
pixels are freed before the next image is read; all analyses of a worker share one budget of
``--max-megapixels`` decoded pixels (:class:`~.limits.PixelBudget`). Large blocks are allocated
outside glibc's heap (``mallopt``: freed pages go back at once) and after each analysis the rest of
the freed heap is handed back to the system (``malloc_trim``). Each
image's answer is the row ``skinlesion predict`` writes: :func:`skinlesion.predict.predict_files`
makes both.

SIGTERM: ``/v1/ready`` turns false and new analyses are refused (503, ``Retry-After``) at once;
requests in flight finish (for at most ``--grace`` seconds); what is still queued or running then is
answered 503 with ``Retry-After`` (JSON, like every refusal) and abandoned; then the server's own
SIGTERM handler (uvicorn's) closes the socket and the process exits.

Test hook (inert unless set): with ``SKINLESION_SERVE_TEST_HOLD=DIR`` an upload named ``hold-*``
waits before its analysis until the file ``DIR/<its name>.go`` exists (or its request is abandoned),
so tests can hold a request in flight without timing anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import io
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import __version__
from ..errors import SkinLesionError
from ..posthoc import LOCALIZATIONS, META_FIELDS, SEXES
from ..predict import row_columns
from ..report import NOTICE
from .refusals import Refusal
from .forms import Upload
from .keys import KeyRing, loose_permissions
from .limits import Admission, Paced, PixelBudget, RateLimit
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one in every worker
HOLD_ENV = "SKINLESION_SERVE_TEST_HOLD"
SHIPPED_LICENSE = "CC BY-NC-SA 4.0 (weights trained on HAM10000: non-commercial use, share alike)"


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.keys = KeyRing(settings.api_keys) if settings.api_keys else None
        if self.keys is not None and loose_permissions(self.keys.path):
            log.warning("the API key file %s is readable by others; make it private with `chmod 600 %s`", self.keys.path, self.keys.path)
        self.rate = RateLimit(settings.rate_per_second) if settings.rate else None
        tune_allocator()
        self.pixels = PixelBudget(settings.max_pixels)  # decoded pixels, shared by this worker's analyses
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
        self.paced = Paced()  # the admitted requests' bodies, parsed one chunk at a time on the event loop
        self.gate = Admission(settings.max_queue + settings.analyses_at_once(), refused=self._refused_busy)  # reading, queued, running
        self.stopping = asyncio.Event()  # --grace is over: everything still admitted is answered 503
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
            if self.settings.heatmaps:  # the first heat map must not pay torch's import and the weights (seconds)
                threading.Thread(target=self._load_heatmaps, name="heatmap-weights", daemon=True).start()
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

    def _load_heatmaps(self) -> None:
        """The PyTorch weights Grad-CAM needs, loaded right after the model is warm (a heat map asked before waits for them)."""
        try:
            t0 = time.perf_counter()
            self._torch_net()
            log.info("heat-map weights loaded in %.1f s", time.perf_counter() - t0)
        except Exception as exc:  # heat maps then fail in one sentence on request; analyses are unaffected
            log.error("heat-map weights could not be loaded (%s: %s)", type(exc).__name__, exc)

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
            log.warning("--grace %g s is over with %d request(s) still in flight; answering them 503", self.settings.grace, self.in_flight)
            self.stopping.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.idle.wait(), 3.0)  # their 503s go out before the server closes
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

    def _refused_busy(self) -> None:
        self.metrics.requests.labels(Admission.PATH, "POST", "503").inc()

    @property
    def admitted(self) -> int:
        return self.gate.count

    @contextlib.contextmanager
    def admission(self, counted: bool = False):
        """Hold an analysis's place: ``counted`` when the connection's protocol took it at the headers (and gives
        it back when the request ends); otherwise taken here, and past the cap a 503 at once."""
        if counted:
            yield
            return
        if not self.gate.take():
            raise Refusal(503, self.gate.sentence(), headers={"Retry-After": str(Admission.RETRY_AFTER)})
        try:
            yield
        finally:
            self.gate.give()

    async def until_stopped(self, work):
        """Await ``work``; when ``--grace`` runs out first, abandon it and answer 503."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel(), stop.cancel()
            raise
        stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise Refusal(
            503,
            "The service is shutting down and could not finish this request; send it to another replica or retry shortly.",
            headers={"Retry-After": "2", "Connection": "close"},
        )

    def _torch_net(self):
        if not self._torch_threads:
            import torch

            torch.set_num_threads(self.threads)
            self._torch_threads = True
        return self.predictor._torch_net()

    def check_rule(self, rule: str) -> None:
        """A decision rule the model holds, or a 422 naming the ones it does."""
        from ..posthoc import rule_log_weights

        try:
            rule_log_weights(self.predictor.config.decision, rule, len(self.predictor.labels))
        except SkinLesionError as exc:
            raise Refusal(422, str(exc), field="rule") from None

    async def analyse(self, uploads: list[Upload], meta: dict | None, heat: str | None, rule: str | None = None):
        abandoned = threading.Event()
        with self._lock:
            self._waiting += 1
        self.metrics.queued.inc()
        job = self.pool.submit(self._job, uploads, meta, heat, abandoned, rule)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:  # the request's timeout (or its client) gave up: do not start, or drop the answer
            abandoned.set()
            if job.cancel():  # it was still waiting: it never runs, so it is counted here
                with self._lock:
                    self._waiting -= 1
                self.metrics.queued.dec()
                self.metrics.abandoned.inc()
            raise

    def _job(self, uploads, meta, heat, abandoned, rule=None):
        with self._lock:
            self._waiting -= 1
        self.metrics.queued.dec()
        if abandoned.is_set():
            self.metrics.abandoned.inc()
            return None
        from ..predict import Cancelled, predict_files

        def check():
            if abandoned.is_set():
                raise Cancelled()

        self.metrics.in_progress.inc()
        t0 = time.perf_counter()
        try:
            _test_hold(uploads, abandoned)
            if abandoned.is_set():
                self.metrics.abandoned.inc()
                return None
            try:
                rows = predict_files(
                    self.predictor,
                    uploads,
                    batch_size=len(uploads),
                    meta=meta,
                    rule=rule,
                    max_pixels=self.settings.max_pixels,
                    cancelled=abandoned.is_set,
                    formats=self.settings.formats,
                    budget=self.pixels,
                )
                columns = row_columns(self.predictor.labels.codes)
                rows = [{c: r.get(c) for c in columns} for r in rows]  # the CSV's columns, in its order
                check()
                heatmap = self._heatmap(uploads[0], rows[0], heat, check) if heat and not rows[0]["error"] else None
                check()
            except Cancelled:
                self.metrics.abandoned.inc()
                return None
            return rows, heatmap
        finally:
            self.metrics.in_progress.dec()
            self.metrics.analysis.observe(time.perf_counter() - t0)
            give_back_memory()

    def _heatmap(self, upload: Upload, row: dict, target: str, check=None) -> dict:
        import numpy as np
        from PIL import Image

        from ..explain import COLOURMAP, METHOD, overlay
        from ..intake import open_image

        code = row["top_class"] if target == "top" else target
        self._torch_net()
        with self.pixels.hold(upload_pixels(upload, self.settings.formats), check):
            image = open_image(upload, str(upload), formats=self.settings.formats, check=check).image
            heat = self.predictor.explain(image, target=self.predictor.labels.index(code), check=check)
            over = overlay(image, heat)

        def png(img) -> str:
            buf = io.BytesIO()
            img.save(buf, "PNG")
            return base64.b64encode(buf.getvalue()).decode()

        return {
            "image": row["image"],
            "class": code,
            "method": METHOD,
            "heatmap_png": png(Image.fromarray((heat * 255).astype(np.uint8), "L")),
            "overlay_png": png(over),
            "note": f"heatmap_png: the map at the model's input size, 0 (least evidence) to 255 (most); "
            f"overlay_png: coloured ({COLOURMAP}) over the image at its own size.",
        }


def upload_pixels(upload: bytes, formats) -> int:
    """An upload's pixel count from its header (0 where it cannot be read: the decode then says why)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(upload), formats=list(formats)) as im:
            return im.size[0] * im.size[1]
    except Exception:
        return 0


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_FROM = 1 << 20  # blocks of at least 1 MiB (decoded images: Pillow allocates 16 MiB blocks) are mapped, not heap


def tune_allocator() -> None:
    """glibc only: map large blocks directly, so that a decoded image's memory goes back to the system
    when it is freed (glibc's dynamic threshold otherwise moves them into the heap after the first
    free, where they stay), and keep the heap arenas to 2 (one per analysis thread otherwise)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_FROM)
    mallopt(M_TRIM_THRESHOLD, 8 << 20)
    mallopt(M_ARENA_MAX, 2)


def give_back_memory() -> None:
    """Return freed heap to the system (glibc keeps it otherwise: a burst of large images would stay resident)."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _trim = False
    if _trim:
        _trim(0)


_trim = None


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
        "classes": [{"code": x.code, "name": x.name, "malignant": x.malignant} for x in predictor.labels.diagnoses],
        "label_set": predictor.labels.name,
        "decision_rule": predictor.rule,
        "columns": row_columns(predictor.labels.codes),
        "input": {
            "preprocess": cfg.preprocess,
            "tta": cfg.tta,
            "formats": f"{' or '.join(settings.formats)}, recognised by their first bytes; EXIF rotation applied",
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
            "max_megapixels": settings.max_megapixels,
            "heatmaps": settings.heatmaps,
            "rate": settings.rate,
        },
    }
