"""A browser tab without the browser: Streamlit's own websocket protocol, for the benchmarks that drive the app.

What a browser does, and only that: the XSRF cookie from ``/_stcore/health``, the ``/_stcore/stream``
websocket (subprotocols ``streamlit`` and the cookie), protobuf ``BackMsg`` reruns carrying the page's query
string and widget states, ``ForwardMsg`` replies read in order (a ``ref_hash`` is resolved from the messages
already seen, as the browser's cache does), and media (``st.image``) fetched over HTTP from the URL the page
gives. Used by ``app_load.py`` (uploads on the analysis page) and ``study_load.py`` (readers on the reading page).
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def xsrf_cookie(base: str) -> str:
    """Ask the server's health endpoint, as the page's script does, for Streamlit's XSRF cookie ('' when XSRF is off)."""
    with urllib.request.urlopen(base + "/_stcore/health", timeout=30) as r:
        for header in r.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name.strip() == "_streamlit_xsrf":
                return rest.split(";")[0]
    return ""


def wait_healthy(base: str, proc, seconds: float) -> bool:
    """True once ``base``'s ``/_stcore/health`` says ok; False when ``proc`` exits or ``seconds`` pass."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return True
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


class StreamlitSession:
    """One websocket session of a Streamlit app; ``query_string`` is what the tab's address carries after ``?``.

    ``ping_interval``: the client's own keepalive pings (the websockets library's default, 20 s, each to be
    answered within 20 s); a browser sends none, so ``None`` is closer to one, and a server starved of CPU for
    20 s then does not have its connection closed by the client (1011 keepalive ping timeout)."""

    ping_interval: float | None = 20.0

    def __init__(self, base: str, query_string: str = ""):
        self.base = base
        self.query_string = query_string
        self.ws = None
        self.cookie = ""
        self.session_id = ""
        self.seen: dict[str, object] = {}  # ForwardMsg hash -> message (the server may send a reference later)

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        self.cookie = await asyncio.to_thread(xsrf_cookie, self.base)
        protocols = ["streamlit", self.cookie] if self.cookie else ["streamlit"]
        headers = {"Cookie": f"_streamlit_xsrf={self.cookie}"} if self.cookie else {}
        ws_url = self.base.replace("http", "ws", 1) + "/_stcore/stream"
        self.ws = await connect(
            ws_url, subprotocols=protocols, additional_headers=headers, origin=self.base, max_size=None, ping_interval=self.ping_interval
        )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def send(self, back) -> None:
        await self.ws.send(back.SerializeToString())

    async def rerun(self, widgets) -> None:
        """Ask for a script run with these widget states (as the browser does on load and on every interaction)."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        back = BackMsg()
        back.rerun_script.query_string = self.query_string
        back.rerun_script.widget_states.widgets.extend(widgets)
        await self.send(back)

    async def next_msg(self, timeout: float):
        """The next ForwardMsg (a reference resolved); ``new_session`` also sets :attr:`session_id`."""
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = ForwardMsg()
        msg.ParseFromString(await asyncio.wait_for(self.ws.recv(), timeout))
        if msg.WhichOneof("type") == "ref_hash":
            msg = self.seen[msg.ref_hash]
        elif msg.hash:
            self.seen[msg.hash] = msg
        if msg.WhichOneof("type") == "new_session":
            self.session_id = msg.new_session.initialize.session_id
        return msg

    def media(self, url: str, timeout: float = 30) -> bytes:
        """What the browser's ``<img src=url>`` gets (blocking; call it in a thread from async code)."""
        req = urllib.request.Request(url if url.startswith("http") else self.base + url)
        if self.cookie:
            req.add_header("Cookie", f"_streamlit_xsrf={self.cookie}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
