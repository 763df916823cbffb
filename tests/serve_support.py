"""Hostile clients shared by tests/test_serve_limits.py and benchmarks/serve_load.py (issue 25)."""

from __future__ import annotations

import socket
import threading

HEADER_BYTES = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n"  # a request's headers, never ended by the blank line


class Trickler:
    """A slow-loris client: on its own connection, one byte of ``request`` every ``every`` seconds (``repeat``
    times over), never finishing its headers; it stops when told, when the bytes run out or when the server
    closes the connection."""

    def __init__(self, port: int, every: float, request: bytes = HEADER_BYTES, repeat: int = 1, host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port))
        self.every, self.data = every, request * repeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Trickler":
        self._thread.start()
        return self

    def __enter__(self) -> "Trickler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        for b in self.data:
            if self._stop.wait(self.every):
                return
            try:
                self.sock.send(bytes([b]))
            except OSError:
                return

    def answer(self, timeout: float) -> bytes:
        """What the server sent before closing (or before a JSON body ended), waiting at most ``timeout`` s per read."""
        self.sock.settimeout(timeout)
        got = b""
        while not got.endswith(b"}"):
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            got += chunk
        return got

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
