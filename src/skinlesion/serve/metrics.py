"""``GET /metrics``: Prometheus counters, gauges and latency histograms (``prometheus-client``).

One registry per application. With several worker processes (``--workers N``) every worker writes
its numbers to the folder named by ``PROMETHEUS_MULTIPROC_DIR`` (the runner creates one) and a scrape,
whichever worker answers it, adds them up (prometheus-client's multiprocess mode). Requests are
labelled by route template (``/v1/analyse``), never by raw path or key, so label sets stay bounded.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PROBES = ("/v1/health", "/v1/ready", "/metrics")  # not counted as in flight: they never hold up a shutdown


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "skinlesion_requests", "HTTP requests answered, by route, method and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "skinlesion_request_seconds", "HTTP request latency, by route", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.analysis = Histogram(
            "skinlesion_analysis_seconds",
            "Time one analysis (all images of a request) spent in the model",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("skinlesion_images", "Images received, by outcome (analysed or refused)", ["outcome"], registry=r)
        self.abandoned = Counter("skinlesion_analyses_abandoned", "Analyses abandoned after the per-request timeout", registry=r)
        self.in_progress = Gauge(
            "skinlesion_analyses_in_progress", "Analyses running in the model now", registry=r, multiprocess_mode="livesum"
        )
        self.queued = Gauge("skinlesion_analyses_waiting", "Analyses waiting for a free slot", registry=r, multiprocess_mode="livesum")
        self.ready = Gauge(
            "skinlesion_ready",
            "1 when the model is loaded and warm and the service is not draining",
            registry=r,
            multiprocess_mode="liveall",
        )

    def render(self) -> tuple[bytes, str]:
        if multiprocess():
            from prometheus_client import multiprocess as mp

            forget_dead_workers()
            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def process_exited() -> None:
        if multiprocess():
            from prometheus_client import multiprocess as mp

            mp.mark_process_dead(os.getpid())


def forget_dead_workers(folder: str | None = None) -> list[int]:
    """Drop the live gauges of worker processes that no longer exist (a killed worker never says it exited).

    Its counters stay (they are totals); its ``skinlesion_ready`` and in-progress series go. Returns the pids dropped.
    """
    import re
    from pathlib import Path

    from prometheus_client import multiprocess as mp

    folder = folder or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    dead = set()
    for f in Path(folder).glob("gauge_live*_*.db"):
        m = re.search(r"_(\d+)\.db$", f.name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:
            pass
    for pid in dead:
        mp.mark_process_dead(pid, folder)
    return sorted(dead)


class Observe:
    """ASGI middleware: count and time every HTTP request; track the ones that are not probes (``service.enter/leave``)."""

    def __init__(self, app, metrics: Metrics, service):
        self.app, self.metrics, self.service = app, metrics, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        probe = scope["path"] in PROBES

        async def sent(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        t0 = time.perf_counter()
        if not probe:
            self.service.enter()
        try:
            await self.app(scope, receive, sent)
        finally:
            if not probe:
                self.service.leave()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - t0)
