"""The service's options: checked here in one sentence each, before anything binds or loads.

The settings travel to every uvicorn worker process as JSON in ``SKINLESION_SERVE_SETTINGS``
(uvicorn starts workers by importing the application factory, so they cannot be passed as objects).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import SkinLesionError

ENV = "SKINLESION_SERVE_SETTINGS"
KEYS_ENV = "SKINLESION_API_KEYS"  # names the key file when --api-keys is not given
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}


@dataclass
class Settings:
    model: str = "default"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_keys: str | None = None  # the key file; None: no keys, loopback only
    rate: str | None = None  # "N/min"; None: no limit
    cors: list[str] = field(default_factory=list)
    max_mb: float = 20.0
    max_images: int = 32
    timeout: float = 30.0  # seconds one request may take before it is answered 503 and abandoned
    grace: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    concurrency: int | None = None  # analyses at once per worker (None: the worker's share of the cores)
    max_queue: int = 64  # analyses waiting per worker before new ones are answered 503
    max_connections: int = 1000  # open connections per worker (the oldest idle one is closed at the cap)
    header_timeout: float = 10.0  # seconds a connection has to send a request's headers
    keep_alive: float = 5.0  # seconds an idle connection stays open between requests
    max_megapixels: float = 64.0  # decoded megapixels one analysis holds at once (images decoded one at a time)
    formats: list[str] = field(default_factory=lambda: ["JPEG", "PNG"])  # image decoders the service opens
    heatmaps: bool = True  # ?heatmap= allowed (the PyTorch weights are loaded at ready time)
    metrics: str = "auto"  # /metrics: open, key (an API key needed), off; auto: open on loopback, key otherwise
    study_db: str | None = None  # serve the reader studies of this database (skinlesion.serve.study_routes)

    # ---- derived ----
    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)

    @property
    def rate_per_second(self) -> float | None:
        return None if self.rate is None else parse_rate(self.rate)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    def metrics_access(self) -> str:
        """open, key or off (auto: open on loopback or without keys, a key needed otherwise)."""
        if self.metrics != "auto":
            return self.metrics
        return "open" if self.api_keys is None or is_loopback(self.host) else "key"

    def analyses_at_once(self) -> int:
        return self.concurrency or max(1, usable_cores() // self.workers)

    def threads(self) -> int:
        """Intra-op threads per analysis: this worker's share of the cores over the analyses it runs at once.

        One thread each by default (as many analyses as cores), so ONNX Runtime starts no thread pool
        that would spin-wait on cores other analyses need.
        """
        share = max(1, usable_cores() // self.workers)
        return max(1, share // self.analyses_at_once())

    # ---- checks ----
    def check(self) -> Settings:
        if not 1 <= self.port <= 65535:
            raise SkinLesionError(f"--port {self.port} is out of range; use 1 to 65535 (8000 is the usual one).")
        if self.workers < 1 or self.workers > 64:
            raise SkinLesionError(f"--workers {self.workers} is out of range; use 1 to 64 (about one per core).")
        if not self.max_mb > 0 or not math.isfinite(self.max_mb):
            raise SkinLesionError(f"--max-mb {self.max_mb:g} must be a positive number of MiB (20 by default).")
        if not 1 <= self.max_images <= 1000:
            raise SkinLesionError(f"--max-images {self.max_images} is out of range; use 1 to 1000.")
        for name, v in (("--timeout", self.timeout), ("--grace", self.grace)):
            if not v > 0 or not math.isfinite(v):
                raise SkinLesionError(f"{name} {v:g} must be a positive number of seconds.")
        if self.concurrency is not None and not 1 <= self.concurrency <= 256:
            raise SkinLesionError(f"--concurrency {self.concurrency} is out of range; use 1 to 256 analyses at once per worker.")
        if not 1 <= self.max_connections <= 100_000:
            raise SkinLesionError(f"--max-connections {self.max_connections} is out of range; use 1 to 100000 per worker.")
        for name, v in (("--header-timeout", self.header_timeout), ("--keep-alive", self.keep_alive)):
            if not v > 0 or not math.isfinite(v):
                raise SkinLesionError(f"{name} {v:g} must be a positive number of seconds.")
        if not 1 <= self.max_megapixels <= 10_000 or not math.isfinite(self.max_megapixels):
            raise SkinLesionError(f"--max-megapixels {self.max_megapixels:g} is out of range; use 1 to 10000 (64 by default).")
        from ..intake import SIGNATURES

        self.formats = [f.strip().upper().replace("JPG", "JPEG") for f in self.formats if f.strip()]
        unknown = [f for f in self.formats if f not in SIGNATURES]
        if unknown or not self.formats:
            raise SkinLesionError(
                f"--formats {','.join(unknown) or '(none)'} is not a format the service reads; choose among {', '.join(SIGNATURES)}."
            )
        if self.metrics not in ("auto", "open", "key", "off"):
            raise SkinLesionError(f"--metrics {self.metrics!r} is not a choice; use open, key, off or auto.")
        if self.metrics == "key" and self.api_keys is None:
            raise SkinLesionError("--metrics key needs --api-keys (the keys that may scrape /metrics).")
        if self.max_queue < 0:
            raise SkinLesionError(f"--max-queue {self.max_queue} must be 0 or more.")
        if self.rate is not None:
            parse_rate(self.rate)
        for origin in self.cors:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise SkinLesionError(f"--cors {origin!r} is not an origin; write it as https://host[:port], without a path.")
        if self.api_keys is None:
            if not is_loopback(self.host):
                raise SkinLesionError(
                    f"Without --api-keys the service binds only to loopback, not {self.host}; create a key with "
                    "`skinlesion serve --new-key --api-keys keys.txt` and start it with --api-keys keys.txt."
                )
        else:
            from .keys import KeyRing

            KeyRing(self.api_keys)  # a missing, empty or malformed key file is refused here
        if self.study_db:  # opened (and migrated) once here: a wrong URL or a newer schema is refused before binding
            from ..study.store import Store

            Store(self.study_db, flag="--study-db").close()
        check_bindable(self.host, self.port)
        return self

    # ---- travel ----
    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Settings:
        raw = os.environ.get(ENV)
        if not raw:
            raise SkinLesionError(f"{ENV} is not set; start the service with `skinlesion serve`.")
        return cls(**json.loads(raw))


def parse_rate(text: str) -> float:
    """``"60/min"`` -> requests per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*", str(text).lower())
    if not m or m.group(2) not in _PER or float(m.group(1)) <= 0:
        raise SkinLesionError(f"--rate {text!r} is not a rate; write it as N/min (or N/s, N/h), e.g. --rate 60/min.")
    return float(m.group(1)) / _PER[m.group(2)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bindable(host: str, port: int) -> None:
    """Refuse an address that is not this machine's, or a port another server holds, before anything loads."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise SkinLesionError(f"--host {host!r} is not an address of this machine; use 127.0.0.1, or 0.0.0.0 with --api-keys.") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(sockaddr)
        except OSError as exc:
            raise SkinLesionError(
                f"Port {port} on {host} is not free ({exc.strerror}); stop what holds it or choose another --port."
            ) from None


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup (container) CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)
