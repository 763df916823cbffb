"""Running the service on uvicorn: one process, or ``--workers N`` processes sharing one socket.

Production settings (uvicorn's deployment guide): no ``Server`` header, ``X-Forwarded-*`` trusted only
from loopback (a reverse proxy on the same host; widen with ``FORWARDED_ALLOW_IPS``), 5 s keep-alive,
and a bounded shutdown. Terminate TLS at the reverse proxy or load balancer in front.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

from .settings import ENV, Settings

APP = "skinlesion.serve.api:create_app_from_env"


def run(settings: Settings) -> int:
    """Serve until SIGTERM or Ctrl-C; 0 after a clean shutdown."""
    import uvicorn

    os.environ[ENV] = settings.to_env()
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="skinlesion-metrics-")  # the workers' numbers, added up by each scrape
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    def stopped(signum, frame):
        # uvicorn re-raises the SIGTERM it shut down for once it is done (and before it starts, this stops it)
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        uvicorn.run(
            APP,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level="info",
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,  # after the app's own drain (--grace): whatever is still open gets this long
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return 0
