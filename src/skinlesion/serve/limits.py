"""What one request may cost the service: its body size (enforced while it streams in) and a per-key rate.

:class:`BodyLimit` is plain ASGI middleware. A declared ``Content-Length`` over the limit is answered
413 before one body byte is read; a body without one (chunked) is counted as it arrives and the
request is answered 413 as soon as the count passes the limit, the rest never read (uvicorn then
closes the connection). :class:`RateLimit` is a token bucket per API key: ``N/min`` allows bursts of
``N`` and ``N`` a minute on average; the refusal says when to retry (``Retry-After``).
Buckets live in each worker process: with ``--workers W`` a key may make up to ``W`` times the rate,
and a shared limit across replicas belongs in the load balancer in front of them. :class:`PixelBudget`
bounds the decoded pixels a worker holds at once, whatever the number of analyses running.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time

from starlette.exceptions import HTTPException


def too_large_sentence(limit: int) -> str:
    return f"The request is over the service's {limit / 2**20:g} MiB limit; send fewer or smaller images per request."


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, too_large_sentence(limit), headers={"Connection": "close"})


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes without reading them whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = False  # the HTTP parser refuses a malformed Content-Length itself
            if too_big:
                return await self._refuse(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    scope.setdefault("state", {})["body_refused"] = seen
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send):
        body = json.dumps({"detail": too_large_sentence(self.limit)}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class RateLimit:
    """A token bucket per key: ``per_second`` on average, bursts of a minute's worth (at least 1)."""

    def __init__(self, per_second: float, *, clock=time.monotonic):
        self.rate = per_second
        self.burst = max(1.0, per_second * 60.0)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when the request may go ahead (one token spent), else the seconds until it may."""
        now = self.clock()
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


class PixelBudget:
    """Decoded pixels one worker holds at once, shared by its concurrent analyses (``--max-megapixels``).

    An analysis takes an image's pixels from its header until the image is reduced to what the analysis
    keeps (:class:`skinlesion.predict.Reduced`), and waits while other analyses hold too many; an image
    larger than the whole budget waits for all of it. A wait calls ``check`` every ``poll`` seconds, so
    an abandoned analysis stops waiting (``check`` raises).
    """

    def __init__(self, pixels: int, poll: float = 0.05):
        self.capacity, self.poll = int(pixels), poll
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int, check=None):
        want = min(int(pixels), self.capacity)
        with self._cond:
            while self.used + want > self.capacity:
                if check is not None:
                    check()
                self._cond.wait(self.poll)
            self.used += want
        try:
            yield
        finally:
            with self._cond:
                self.used -= want
                self._cond.notify_all()
