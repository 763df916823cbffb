"""What one request may cost the service: its body size (enforced while it streams in) and a per-key rate.

:class:`BodyLimit` is plain ASGI middleware. A declared ``Content-Length`` over the limit is answered
413 before one body byte is read; a body without one (chunked) is counted as it arrives and the
request is answered 413 as soon as the count passes the limit, the rest never read (uvicorn then
closes the connection). :class:`Admission` counts the analyses a worker holds (reading their body, queued or
running) and is asked when a request's headers are parsed; :class:`Paced` parses the bodies of the requests it admitted
one chunk at a time, so that they never hold the event loop away from new requests' headers. :class:`RateLimit` is a token bucket per API key: ``N/min`` allows bursts of
``N`` and ``N`` a minute on average; the refusal says when to retry (``Retry-After``).
Buckets live in each worker process: with ``--workers W`` a key may make up to ``W`` times the rate,
and a shared limit across replicas belongs in the load balancer in front of them. :class:`PixelBudget`
bounds the decoded pixels a worker holds at once, whatever the number of analyses running.
"""

from __future__ import annotations

import asyncio
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


class Admission:
    """``POST /v1/analyse`` requests a worker holds at once (reading their body, queued or running): at most ``cap``.

    Served by :class:`~.protocol.GuardedH11Protocol`, a request takes its place when its headers are parsed, in
    the step that parsed them, and gives it back when its application task ends; a request past the cap is
    answered 503 right there, before its body is read, never behind the other requests' body parsing on the event
    loop. Without that protocol (an in-process test client) the route takes the place itself
    (:meth:`skinlesion.serve.service.Service.admission`). Used on the event loop only.
    """

    PATH = "/v1/analyse"
    LIFESPAN_KEY = "skinlesion.admission"  # the worker's Admission, in the lifespan state every request's scope copies
    STATE = "skinlesion.admitted"  # in a request's scope["state"]: its place was taken at its headers
    RETRY_AFTER = 2

    def __init__(self, cap: int, refused=None):
        self.cap, self.count = cap, 0
        self.refused = refused or (lambda: None)  # called for each refusal made at the headers (the route's are counted as responses)

    def counts(self, scope) -> bool:
        return scope["method"] == "POST" and scope["path"][len(scope.get("root_path", "")) :] == self.PATH

    def take(self) -> bool:
        if self.count >= self.cap:
            return False
        self.count += 1
        return True

    def give(self) -> None:
        self.count -= 1

    def sentence(self) -> str:
        return f"The service is busy ({self.count} requests admitted, the most it queues); retry in a few seconds."


class Paced:
    """Request bodies parsed one chunk per pass of the worker's event loop.

    A pass of the loop runs every task that is ready before it reads its sockets again, so the admitted requests
    of a burst, each parsing the chunk of multipart body that arrived for it (a few milliseconds of Python per
    256 KiB), would hold back the headers of the requests behind them, and with them the 503s :class:`Admission`
    answers from the headers. A request's ``receive`` wrapped by :meth:`receive` takes the turn when a chunk
    arrives and hands it on at its next ``receive``, in the loop's next pass: one chunk is parsed per pass, the
    sockets are read between any two. A request waiting for its client's bytes holds no turn.
    """

    def __init__(self):
        self._turn = asyncio.Lock()  # fair: a waiting task is served before a newcomer

    def _hand_on(self) -> None:
        asyncio.get_running_loop().call_soon(self._turn.release)  # the next pass: its sockets first

    @contextlib.asynccontextmanager
    async def receive(self, receive):
        held = False

        async def paced():
            nonlocal held
            if held:
                held = False
                self._hand_on()
            message = await receive()
            await self._turn.acquire()
            held = True
            return message

        try:
            yield paced
        finally:
            if held:
                self._hand_on()


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
