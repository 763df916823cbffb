"""Connection limits, in the server itself: uvicorn's HTTP/1.1 protocol (h11) with deadlines and a cap.

- **Header deadline** (``--header-timeout``, 10 s): a connection must complete its request line and
  headers within this long of its first byte (or of connecting); one that does not (a slow-loris
  trickle, an idle socket) gets a JSON 408 and is closed.
- **Body deadline** (``--timeout`` + 1 s): a request body must arrive whole within this long of its
  headers; ``/v1/analyse`` answers its own 503 at ``--timeout``, this closes what is left.
- **Keep-alive** (``--keep-alive``, 5 s): an idle connection between requests is closed (uvicorn's).
- **Connection cap** (``--max-connections``): at the cap, a new connection closes the one that has been
  quiet longest among those holding no request in progress (idle, or still sending headers), if it has
  been quiet for :data:`EVICT_QUIET` s; otherwise (every connection busy or just active) the new one
  gets a JSON 503 with ``Retry-After`` at once. The runner keeps the cap below the file-descriptor
  limit, so the process does not run out of them; if it ever does, :func:`quiet_emfile` logs one line
  every 10 s, never one per failed ``accept``.
- **Lingering close**: a refusal sent while the client is still sending its body (a 413, an early 503)
  is followed by reading and discarding up to :data:`DRAIN_BYTES` for at most :data:`DRAIN_SECONDS`
  before the socket closes, so clients that send the whole body before reading (``urllib``,
  ``requests``) read the answer instead of a connection reset.
- **Admission** (``--concurrency`` + ``--max-queue``, :class:`~.limits.Admission`): a ``POST /v1/analyse``
  takes its place as soon as its headers are parsed, before uvicorn creates its application task; past the
  cap it is answered the JSON 503 with ``Retry-After`` right there, in the step of the event loop that parsed
  the headers (no task, no framework, no waiting behind the admitted requests' body parsing), and its body is
  read away by the lingering close. The place is given back when the request's task ends, however it ends.
- A malformed request gets the same JSON sentence shape as every refusal, not uvicorn's plain text.

The limits come from the service's settings (the environment every worker inherits).
"""

from __future__ import annotations

import errno
import json
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import Admission

log = logging.getLogger("uvicorn.error")
DRAIN_BYTES = 64 * 2**20  # at most this much of an unwanted body is read before a refusal's close
DRAIN_SECONDS = 10.0
REFUSED_LINGER = 1.0  # a connection refused at the cap is held this long at most (its descriptor is what is short)
EVICT_QUIET = 1.0  # a connection quiet for this long may be closed to make room for a new one
_REASONS = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}
_limits: dict | None = None


def limits() -> dict:
    """This worker's connection limits, from its settings (read once)."""
    global _limits
    if _limits is None:
        from .settings import Settings

        s = Settings.from_env()
        _limits = {"max_connections": s.max_connections, "header_timeout": s.header_timeout, "body_timeout": s.timeout + 1.0}
    return _limits


def raw_response(status: int, sentence: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"detail": sentence}).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Transport:
    """The connection's transport as the request cycle sees it: its ``close`` lingers while the client still sends."""

    def __init__(self, transport, protocol: GuardedH11Protocol):
        self._transport, self._protocol = transport, protocol

    def close(self):
        self._protocol.close_softly()

    def __getattr__(self, name):
        return getattr(self._transport, name)


class GuardedH11Protocol(H11Protocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits()
        self._timer = None
        self._timer_kind = None
        self._draining_until = None  # lingering close: discard input until then
        self._drained = 0
        self._quiet_since = time.monotonic()
        self._busy: str | None = None  # the refusal of the request whose headers were just parsed
        self._app, self.app = self.app, self._admitted_app

    # ---- admission (POST /v1/analyse), from the headers ----
    def _should_upgrade(self) -> bool:
        """uvicorn asks this once a request's headers are parsed and its scope built, before it creates the
        request's task; True makes it call :meth:`handle_websocket_upgrade` instead, which answers the refusal."""
        self._busy = None
        if super()._should_upgrade():
            return True
        gate = self.app_state.get(Admission.LIFESPAN_KEY)
        if gate is None or not gate.counts(self.scope):
            return False
        if gate.take():
            self.scope["state"][Admission.STATE] = True
            return False
        self._busy = gate.sentence()
        gate.refused()
        return True

    def handle_websocket_upgrade(self, event) -> None:
        if self._busy is None:
            return super().handle_websocket_upgrade(event)
        self.refuse(503, self._busy, retry_after=Admission.RETRY_AFTER)  # then the body is read away, and the connection closed

    async def _admitted_app(self, scope, receive, send):
        """The application, giving back the place its request took at the headers when the request ends."""
        taken = scope["type"] == "http" and scope.get("state", {}).get(Admission.STATE)
        gate = self.app_state.get(Admission.LIFESPAN_KEY) if taken else None
        try:
            await self._app(scope, receive, send)
        finally:
            if gate is not None:
                gate.give()

    # ---- connection ----
    def connection_made(self, transport) -> None:
        cap = self.limits["max_connections"]
        if len(self.connections) >= cap and not self._evict_one():
            super().connection_made(transport)
            self.transport = _Transport(transport, self)
            self.refuse(503, "The service has too many open connections; retry in a few seconds.", retry_after=2, linger=REFUSED_LINGER)
            return
        super().connection_made(transport)
        self.transport = _Transport(transport, self)
        self._arm("header", self.limits["header_timeout"])

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """No request in progress: between requests, or still sending headers."""
        return self._draining_until is None and self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _evict_one(self) -> bool:
        idle = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and c._idle() and not c.transport.is_closing()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._quiet_since)
        if time.monotonic() - oldest._quiet_since < EVICT_QUIET:
            return False
        oldest._close_now()
        self.connections.discard(oldest)  # its connection_lost comes later; the slot is free now
        return True

    # ---- deadlines ----
    def _arm(self, kind: str, seconds: float) -> None:
        self._disarm()
        self._timer_kind = kind
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_kind = None

    def _follow(self) -> None:
        """Set the deadline for where the client's request now is."""
        if self._draining_until is not None or self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            pending = bool(self.conn.trailing_data[0])
            if pending and self._timer_kind != "header":
                self._arm("header", self.limits["header_timeout"])
            elif not pending and self._timer_kind == "header" and self.cycle is not None:
                self._disarm()  # between requests: uvicorn's keep-alive timer watches the connection
        elif state is h11.SEND_BODY:
            if self._timer_kind != "body":
                self._arm("body", self.limits["body_timeout"])
        elif self._timer_kind is not None:
            self._disarm()

    def _expired(self) -> None:
        kind, self._timer, self._timer_kind = self._timer_kind, None, None
        if self.transport.is_closing():
            return
        if kind == "header" and self._idle():
            self.refuse(408, f"The request's headers did not arrive within {self.limits['header_timeout']:g} s; send them at once.")
        elif kind == "body" and self.conn.their_state is h11.SEND_BODY:
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False  # the application answers (its own timeout); then the connection closes
                self._arm("body", 5.0)
            else:
                self._close_now()

    def data_received(self, data: bytes) -> None:
        if self._draining_until is not None:
            self._drained += len(data)
            if self._drained > DRAIN_BYTES or time.monotonic() > self._draining_until:
                self._close_now()
            return
        self._quiet_since = time.monotonic()
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        self._quiet_since = time.monotonic()
        super().on_response_complete()
        self._follow()

    def eof_received(self):
        if self._draining_until is not None:
            self._close_now()
        return super().eof_received()

    # ---- closing ----
    def refuse(self, status: int, sentence: str, retry_after: int | None = None, linger: float = DRAIN_SECONDS) -> None:
        """Answer outside the request cycle (before a request, or instead of one), then close softly."""
        self._disarm()
        self.transport.write(raw_response(status, sentence, retry_after))
        self._linger(linger)

    def close_softly(self) -> None:
        """Close after a response; if the client is still sending its body, read it away first (bounded)."""
        if self.conn.their_state is h11.SEND_BODY or (self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]):
            self._linger()
        else:
            self._close_now()

    def _linger(self, seconds: float = DRAIN_SECONDS) -> None:
        t = self.transport._transport
        if self._draining_until is not None or t.is_closing():
            return
        self._disarm()
        self._draining_until = time.monotonic() + seconds
        try:
            if t.can_write_eof():
                t.write_eof()  # the answer, then FIN: the client sees the end of the response
        except OSError:
            pass
        self.flow.resume_reading()
        self._timer_kind = "drain"
        self._timer = self.loop.call_later(seconds, self._close_now)

    def _close_now(self) -> None:
        self._disarm()
        t = self.transport._transport if isinstance(self.transport, _Transport) else self.transport
        if not t.is_closing():
            t.close()

    def send_400_response(self, msg: str) -> None:
        self.refuse(400, "The request is not valid HTTP (a malformed request line or headers, or headers over 16 KiB).")

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._close_now()
        else:
            self.cycle.keep_alive = False

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self._close_now()


# ---- running out of file descriptors ------------------------------------------------------------


class quiet_emfile:
    """A loop exception handler: out-of-descriptor errors are logged once every ``every`` seconds, with a count."""

    def __init__(self, every: float = 10.0, clock=time.monotonic):
        self.every, self.clock = every, clock
        self.last = None
        self.suppressed = 0

    def __call__(self, loop, context) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            now = self.clock()
            if self.last is not None and now - self.last < self.every:
                self.suppressed += 1
                return
            more = f" ({self.suppressed} more since the last line)" if self.suppressed else ""
            log.error(
                "out of file descriptors: new connections wait in the kernel's queue%s; raise `ulimit -n` or lower --max-connections",
                more,
            )
            self.last, self.suppressed = now, 0
            return
        loop.default_exception_handler(context)
