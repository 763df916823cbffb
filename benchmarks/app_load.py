"""Load test of the web app: N concurrent sessions, each uploading real images over Streamlit's websocket.

Starts `skinlesion app` on a free local port (or uses --url), speaks Streamlit's own protocol as the
browser does (the XSRF cookie, the /_stcore/stream websocket with protobuf BackMsg/ForwardMsg,
a file-URL request, the multipart PUT to /_stcore/upload_file, a rerun carrying the uploader's
widget state), and reads every answer the page shows. First one session alone gives the reference
answer for each image; then N sessions upload in a loop, side by side, for a bounded time.

Reported: uploads, errors, answers that differ from the single session's (a mix-up between
sessions shows here), upload-to-result p50/p95 (PUT to the script's end), and the server's RSS
(the app process and its children, sampled through the run).

    python benchmarks/app_load.py --sessions 16 --seconds 60
    python benchmarks/app_load.py --sessions 2 --seconds 5 --json runs/app_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _streamlit_ws beside this file, however this is loaded

from _streamlit_ws import StreamlitSession  # noqa: E402
from _streamlit_ws import free_port as _free_port  # noqa: E402,F401  (cold_start.py imports it from here)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ANSWER_ELEMENTS = ("markdown", "alert", "metric", "text", "heading", "code")


def _rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (from /proc), MiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for t in Path(f"/proc/{p}/task").iterdir():
                kids = (t / "children").read_text().split()
                todo += [int(k) for k in kids]
        except (OSError, ValueError):
            pass
    return total / 1024


def _put(url: str, name: str, data: bytes, cookie: str) -> int:
    boundary = uuid.uuid4().hex
    body = (
        (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n').encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(url, data=body, method="PUT")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    if cookie:
        req.add_header("Cookie", f"_streamlit_xsrf={cookie}")
        req.add_header("X-Xsrftoken", cookie)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status


class Session(StreamlitSession):
    """One browser tab, without the browser."""

    def __init__(self, base: str):
        super().__init__(base)
        self.uploader = ""

    async def open(self):
        await self.connect()
        await self.rerun([])
        self.first_texts = await self.until_finished()
        if not self.uploader:
            raise RuntimeError("the page has no file uploader")

    async def _next(self, timeout: float):
        return await self.next_msg(timeout)

    async def until_finished(self, timeout: float = 120.0) -> list[str]:
        """Read messages until the script run ends; the texts of what the page shows."""
        texts: list[str] = []
        while True:
            msg = await self._next(timeout)
            kind = msg.WhichOneof("type")
            if kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                el = msg.delta.new_element
                t = el.WhichOneof("type")
                if t == "file_uploader":
                    self.uploader = el.file_uploader.id
                elif t in ANSWER_ELEMENTS:
                    texts.append(f"{t}: {getattr(el, t)}".strip())
            elif kind == "script_finished":
                return texts

    async def upload(self, name: str, data: bytes) -> tuple[float, list[str]]:
        """Upload one image as the page's uploader does; (seconds from PUT to the run's end, the page's texts)."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.Common_pb2 import FileURLs, UploadedFileInfo
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        back = BackMsg()
        back.file_urls_request.request_id = uuid.uuid4().hex
        back.file_urls_request.session_id = self.session_id
        back.file_urls_request.file_names.append(name)
        await self.send(back)
        while True:
            msg = await self._next(60)
            if msg.WhichOneof("type") == "file_urls_response":
                urls = msg.file_urls_response.file_urls[0]
                break
        t0 = time.perf_counter()
        url = urls.upload_url if urls.upload_url.startswith("http") else self.base + urls.upload_url
        status = await asyncio.to_thread(_put, url, name, data, self.cookie)
        if status not in (200, 204):
            raise RuntimeError(f"upload answered {status}")
        state = WidgetState(id=self.uploader)
        state.file_uploader_state_value.uploaded_file_info.append(
            UploadedFileInfo(
                name=name,
                size=len(data),
                file_id=urls.file_id,
                file_urls=FileURLs(file_id=urls.file_id, upload_url=urls.upload_url, delete_url=urls.delete_url),
            )
        )
        await self.rerun([state])
        texts = await self.until_finished()
        return time.perf_counter() - t0, texts


def _answer(texts: list[str]) -> tuple[str, ...]:
    """What the page concluded for the image (every text shown but the uploader's own chrome)."""
    return tuple(t for t in texts if "Drag and drop" not in t)


async def _worker(base, images, deadline, stats, reference, k):
    s = Session(base)
    try:
        await s.open()
        i = k  # sessions start on different images, so neighbours upload different ones at once
        while time.perf_counter() < deadline:
            name, data = images[i % len(images)]
            i += 1
            try:
                seconds, texts = await s.upload(name, data)
            except Exception as exc:  # counted and reported: a load test must not stop at the first failure
                stats["errors"].append(f"{type(exc).__name__}: {exc}")
                continue
            stats["latency"].append(seconds)
            if reference is not None and _answer(texts) != reference[name]:
                stats["differ"].append(name)
    except Exception as exc:
        stats["errors"].append(f"session {k}: {type(exc).__name__}: {exc}")
    finally:
        await s.close()


async def _load(base, images, sessions: int, seconds: float, reference):
    stats = {"latency": [], "errors": [], "differ": []}
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*[_worker(base, images, deadline, stats, reference, k) for k in range(sessions)])
    return stats


async def _single(base, images) -> dict:
    s = Session(base)
    await s.open()
    try:
        ref = {}
        for name, data in images:
            ref[name] = _answer((await s.upload(name, data))[1])
        return ref
    finally:
        await s.close()


def _pct(xs, q):
    import numpy as np

    return float(np.percentile(xs, q)) if xs else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the concurrent sessions keep uploading")
    ap.add_argument("--url", default=None, help="an app already running (default: start `skinlesion app` here)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--images", nargs="*", default=None, help="real images (default: the full-resolution melanoma and a DermaMNIST image)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    paths = (
        [Path(p) for p in args.images]
        if args.images
        else [
            SHARED / "fullres" / "ISIC_0024310.jpg",
            sorted((SHARED / "dermamnist28" / "images").glob("*.jpg"))[0] if (SHARED / "dermamnist28" / "images").exists() else None,
        ]
    )
    paths = [p for p in paths if p is not None and p.exists()]
    if not paths:
        sys.exit("no real images found: pass --images FILE ... (the defaults live in ../shared/data)")
    images = [(p.name, p.read_bytes()) for p in paths]
    server = None
    base = args.url
    if base is None:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "skinlesion.cli", "app", "--model", args.model, "--port", str(port), "--address", "127.0.0.1"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.time()
        while True:
            try:
                if urllib.request.urlopen(base + "/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() - t0 > 120:
                sys.exit("the app did not start")
            time.sleep(0.2)
    rss = []

    async def sample_rss(stop):
        while not stop.is_set():
            if server is not None:
                rss.append(_rss_mib(server.pid))
            await asyncio.sleep(0.5)

    async def run():
        reference = await _single(base, images)
        idle = _rss_mib(server.pid) if server is not None else float("nan")
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(stop))
        t = time.perf_counter()
        stats = await _load(base, images, args.sessions, args.seconds, reference)
        wall = time.perf_counter() - t
        stop.set()
        await sampler
        return reference, idle, stats, wall

    try:
        reference, idle, stats, wall = asyncio.run(run())
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    lat = stats["latency"]
    result = {
        "sessions": args.sessions,
        "seconds": args.seconds,
        "images": [n for n, _ in images],
        "uploads": len(lat),
        "uploads_per_second": len(lat) / wall,
        "errors": len(stats["errors"]),
        "error_examples": stats["errors"][:5],
        "answers_differing_from_single_session": len(stats["differ"]),
        "p50_s": _pct(lat, 50),
        "p95_s": _pct(lat, 95),
        "server_rss_idle_mib": idle,
        "server_rss_peak_mib": max(rss) if rss else float("nan"),
        "reference_answer_lines": {k: len(v) for k, v in reference.items()},
    }
    print(
        f"{args.sessions} sessions x {args.seconds:.0f} s: {result['uploads']} uploads ({result['uploads_per_second']:.2f}/s), "
        f"{result['errors']} errors, {result['answers_differing_from_single_session']} answers differing from one session's; "
        f"upload->result p50 {result['p50_s']:.2f} s, p95 {result['p95_s']:.2f} s; "
        f"server RSS {result['server_rss_idle_mib']:.0f} MiB after one session, peak {result['server_rss_peak_mib']:.0f} MiB"
    )
    for e in result["error_examples"]:
        print("  error:", e)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
