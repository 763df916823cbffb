"""Running the service on uvicorn: one process, or ``--workers N`` processes sharing one socket.

Production settings (uvicorn's deployment guide): no ``Server`` header, ``X-Forwarded-*`` trusted only
from loopback (a reverse proxy on the same host; widen with ``FORWARDED_ALLOW_IPS``), ``--keep-alive``
(5 s), and a bounded shutdown. Terminate TLS at the reverse proxy or load balancer in front.
Connections are served by :class:`~.protocol.GuardedH11Protocol` (header and body deadlines, a
connection cap). The soft file-descriptor limit is raised towards the hard one so the cap fits under
it; where it cannot be, the cap is lowered to fit, and the log says so.

With several workers uvicorn binds the shared socket itself, with ``proto`` 0, so asyncio never sets
``TCP_NODELAY`` on the connections it accepts and every keep-alive response waits ~40 ms for the
client's delayed ACK (uvicorn issue #3149; measured here: 2 workers, one client, 132 ms against
84 ms with one worker). :class:`_Config` binds it as a TCP socket, which the workers inherit.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile

import uvicorn

from .settings import ENV, Settings

APP = "skinlesion.serve.api:create_app_from_env"
FD_RESERVE = 128  # descriptors kept free for the model, logs and the listening socket


def fit_descriptors(settings: Settings) -> None:
    """Raise the soft RLIMIT_NOFILE to fit ``--max-connections``; lower the cap where the hard limit is too low."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = settings.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        cap = max(1, soft - FD_RESERVE)
        logging.getLogger("uvicorn.error").warning(
            "--max-connections %d does not fit the file-descriptor limit (%d); serving at most %d connections per worker "
            "(raise `ulimit -n` for more)",
            settings.max_connections,
            soft,
            cap,
        )
        settings.max_connections = cap


class _Config(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
            sock.set_inheritable(True)
        return sock


def run(settings: Settings) -> int:
    """Serve until SIGTERM or Ctrl-C; 0 after a clean shutdown."""
    from uvicorn.supervisors import Multiprocess

    from .protocol import GuardedH11Protocol

    fit_descriptors(settings)
    os.environ[ENV] = settings.to_env()
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="skinlesion-metrics-")  # the workers' numbers, added up by each scrape
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    def stopped(signum, frame):
        # uvicorn re-raises the SIGTERM it shut down for once it is done (and before it starts, this stops it)
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stopped)
    config = _Config(
        APP,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level="info",
        server_header=False,
        http=GuardedH11Protocol,
        timeout_keep_alive=settings.keep_alive,
        timeout_graceful_shutdown=5,  # after the app's own drain (--grace): whatever is still open gets this long
    )
    try:
        if settings.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()  # as uvicorn.run does, with a TCP socket
        else:
            server = uvicorn.Server(config)
            server.run()
            if not server.started:
                return 3  # uvicorn's startup failure; it logged why
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return 0
