"""Load test of the REST service: 1, 4 and 16 concurrent clients, 1 and 2 workers, beside the in-process Predictor.

Loopback only, bounded in time (``--seconds`` per configuration, at most 300) and in count
(``--max-requests`` per configuration). In one run, on the same images (by default the ones
benchmarks/app_load.py uploads: the real full-resolution melanoma and a real 28 px DermaMNIST image):

1. for each ``--workers``: ``skinlesion serve`` on a free loopback port; one sequential pass gives the
   reference answer of every image;
2. for each number of clients: first the in-process ``Predictor`` (ONNX Runtime) for a slice of the
   time (a quarter, at most 10 s), upload-to-result (``predict(bytes)``: decode, intake, preprocessing,
   all members and TTA views, calibration, patient-data fusion, OOD, rules), one image after the
   other, with 1 intra-op thread and with all cores; right after, N clients (asyncio + httpx, one
   keep-alive connection each, starting on different images) post one image per request for the
   fixed time. Each ratio compares numbers taken a minute apart at most (the machine is shared).

Reported per configuration: requests, throughput, client-side p50/p95 latency, errors (any non-200
or transport error) and answers that differ from the sequential ones (the whole row: a mix-up
between requests shows here), and whether the service's rows equal the in-process ones.

    python benchmarks/serve_load.py --seconds 60 --json runs/serve_load.json
    python benchmarks/serve_load.py --short          # smoke test: 2 s, 1 and 4 clients, 1 worker
    python benchmarks/serve_load.py --short --url http://127.0.0.1:8000 --api-key-file key.txt   # a running service
    python benchmarks/serve_load.py --hostile --json runs/serve_hostile.json   # the resource-exhaustion targets
    python benchmarks/serve_load.py --hostile --src old=/tmp/old/src --src new=src   # two versions, part by part

``--hostile`` (issue 25) runs instead: (a) 1,100 idle connections and a header-trickling client against a
service whose file-descriptor limit is 1,024 (one real client's p50 before and during, its errors, the
log's line count); (m, n) one request of 32 solid 7745x7745 PNGs (the worker's peak RSS, and each second
for 10 s after; with heat maps and with ``--no-heatmaps``); (c) ``--timeout 2 --concurrency 1``: when the
timed-out analysis's slot is free and how long the next small request, sent at once, waits; (d) 150
connections opened first, then 150 requests sent at the same moment at ``--concurrency 1``, from one asyncio
client in a process of its own (the benchmark's nice, as the service): how many wait, how fast the rest are
refused, timed by the client and by the service itself (its headers parsed to its status line written, from a
trace the served process writes at exit: ``_TRACE``, loaded there as ``sitecustomize``); whether any answer was a plain-text 500, and whether ``urllib`` reads the
413 of a 25 MB body. ``--src LABEL=DIR`` (repeatable) serves each part from each package tree in turn
(the previous version beside this one, minutes apart on the same machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` and all its descendants (the workers), MiB, from /proc (``field``: VmRSS,
    or RssAnon for the private memory alone, without the mapped libraries' pages)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(k) for k in (t / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return total / 1024


def _pct(xs, q) -> float:
    import numpy as np

    return float(np.percentile(xs, q)) if xs else float("nan")


def default_images() -> list[Path]:
    paths = [SHARED / "fullres" / "ISIC_0024310.jpg"]
    d28 = SHARED / "dermamnist28" / "images"
    if d28.exists():
        paths.append(sorted(d28.glob("*.jpg"))[0])
    return [p for p in paths if p.exists()]


class InProcess:
    """The Predictor in this process, one image after the other: what a request costs without HTTP.

    Loaded once (1 intra-op thread, and all cores), measured again right before every service
    configuration, so each ratio compares numbers taken minutes apart at most on a shared machine.
    """

    def __init__(self, images):
        from skinlesion.predict import Predictor

        self.images = images
        self.predictors = {1: Predictor("default", threads=1), None: Predictor("default")}
        self.rows = {}
        for p in self.predictors.values():
            for name, data in images:  # warm-up, as the service does before it is ready
                self.rows[name] = p.predict(data, name).row()

    def measure(self, threads: int | None, seconds: float, max_requests: int) -> dict:
        p = self.predictors[threads]
        lat = []
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < deadline and len(lat) < max_requests:
            name, data = self.images[len(lat) % len(self.images)]
            t = time.perf_counter()
            p.predict(data, name)
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
        return {
            "threads": threads or "all cores",
            "requests": len(lat),
            "per_second": len(lat) / elapsed,
            "p50_ms": 1000 * _pct(lat, 50),
            "p95_ms": 1000 * _pct(lat, 95),
            "backend": p.backend,
        }


class External:
    """A service started elsewhere (--url): used as it is, never stopped here."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def wait_ready(self) -> None:
        pass

    def stop(self) -> None:
        return None

    proc = None


class Service:
    def __init__(self, workers: int, extra: list[str]):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "skinlesion.cli", "serve", "--port", str(self.port), "--workers", str(workers), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        import httpx

        t0 = time.time()
        while True:
            try:
                if httpx.get(self.url + "/v1/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.time() - t0 > timeout:
                self.stop()
                sys.exit(f"the service did not become ready (exit {self.proc.poll()})")
            time.sleep(0.2)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()


HEADERS: dict = {}


async def _post(client, name, data):
    r = await client.post("/v1/analyse", files=[("images", (name, data, "image/jpeg"))])
    return r.status_code, (r.json()["images"][0] if r.status_code == 200 else r.text[:200])


async def _reference(url, images) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=120) as c:
        out = {}
        for name, data in images:
            status, row = await _post(c, name, data)
            if status != 200:
                sys.exit(f"the reference request for {name} failed: {status} {row}")
            out[name] = row
        return out


async def _load(url, images, clients: int, seconds: float, max_requests: int, reference) -> dict:
    import httpx

    stats = {"latency": [], "errors": [], "differ": 0}
    deadline = time.perf_counter() + seconds
    sent = [0]

    async def client(k):
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=120) as c:
            i = k
            while time.perf_counter() < deadline and sent[0] < max_requests:
                sent[0] += 1
                name, data = images[i % len(images)]
                i += 1
                t = time.perf_counter()
                try:
                    status, row = await _post(c, name, data)
                except Exception as exc:  # counted and reported: a load test must not stop at the first failure
                    stats["errors"].append(f"{type(exc).__name__}: {exc}")
                    continue
                if status != 200:
                    stats["errors"].append(f"{status}: {row}")
                    continue
                stats["latency"].append(time.perf_counter() - t)
                stats["differ"] += row != reference[name]

    t0 = time.perf_counter()
    await asyncio.gather(*[client(k) for k in range(clients)])
    elapsed = time.perf_counter() - t0
    lat = stats["latency"]
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(lat) + len(stats["errors"]),
        "per_second": len(lat) / elapsed,
        "p50_ms": 1000 * _pct(lat, 50),
        "p95_ms": 1000 * _pct(lat, 95),
        "errors": len(stats["errors"]),
        "first_error": stats["errors"][0] if stats["errors"] else None,
        "differ": stats["differ"],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long each configuration runs (at most 300)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--max-requests", type=int, default=20000, help="stop a configuration after this many requests")
    ap.add_argument("--images", nargs="*", default=None, help="images (default: the real melanoma and a real DermaMNIST image)")
    ap.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[], help="more `skinlesion serve` options (last)")
    ap.add_argument("--url", default=None, help="a service already running (default: start `skinlesion serve` per --workers)")
    ap.add_argument("--api-key-file", default=None, help="with --url: the file holding an API key for it")
    ap.add_argument("--short", action="store_true", help="a smoke test: 2 s (in-process 1 s), 1 and 4 clients, 1 worker")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.short:
        args.seconds, args.clients, args.workers = 2.0, [1, 4], [1]
    if args.api_key_file:
        HEADERS["Authorization"] = f"Bearer {Path(args.api_key_file).read_text().strip()}"
    args.seconds = min(args.seconds, 300.0)
    paths = [Path(p) for p in args.images] if args.images else default_images()
    if not paths:
        sys.exit("no images found: pass --images FILE ... (the defaults live in ../shared/data)")
    images = [(p.name, p.read_bytes()) for p in paths]

    local = InProcess(images)
    slice_s = min(10.0, max(1.0, args.seconds / 4))  # the in-process measurement before each configuration
    runs = []
    for w in [None] if args.url else args.workers:
        svc = Service(w, args.serve_args) if w else External(args.url)
        code = None
        try:
            svc.wait_ready()
            reference = asyncio.run(_reference(svc.url, images))
            same = all(reference[n] == json.loads(json.dumps(local.rows[n])) for n, _ in images)
            for c in args.clients:
                base = [local.measure(t, slice_s, args.max_requests) for t in (1, None)]
                r = asyncio.run(_load(svc.url, images, c, args.seconds, args.max_requests, reference))
                r.update(workers=w, rows_equal_in_process=same, server_rss_mib=round(_rss_mib(svc.proc.pid)) if w else None)
                r["in_process"] = base
                r["throughput_vs_in_process_1_thread"] = r["per_second"] / base[0]["per_second"]
                r["p50_minus_in_process_ms"] = {str(i["threads"]): r["p50_ms"] - i["p50_ms"] for i in base}
                runs.append(r)
                print(json.dumps(r), flush=True)
        finally:
            code = svc.stop()
        runs[-1]["exit_code_after_sigterm"] = code
    result = {"images": [n for n, _ in images], "seconds": args.seconds, "cores": len(os.sched_getaffinity(0)), "service": runs}
    print(
        "\n| service | clients | requests | throughput /s | in-process 1 thread /s (ratio) | p50 / p95 ms "
        "| in-process p50 1 thread / all cores | errors | differing answers | server RSS |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        one, allc = r["in_process"]
        print(
            f"| {r['workers'] or 'external'} worker(s) | {r['clients']} for {r['seconds']:g} s | {r['requests']} | {r['per_second']:.1f} | "
            f"{one['per_second']:.1f} ({r['throughput_vs_in_process_1_thread']:.2f}x) | {r['p50_ms']:.1f} / {r['p95_ms']:.1f} | "
            f"{one['p50_ms']:.1f} / {allc['p50_ms']:.1f} ms | {r['errors']} | {r['differ']} | {r['server_rss_mib'] or '-'} MiB |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


# ---- --hostile: the resource-exhaustion targets (issue 25) -------------------------------------------


def _logged_service(args: list[str], log: Path, nofile: int | None = None, src: Path | None = None, trace: Path | None = None):
    """``skinlesion serve`` with its log in ``log``; ``src``: the package's code to run (default: this checkout's);
    ``trace``: where the service writes its requests' timestamps at exit (:data:`_TRACE`)."""
    import resource

    port = _free_port()
    cmd = [sys.executable, "-m", "skinlesion.cli", "serve", "--port", str(port), *args]
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
    env = {**os.environ, "PYTHONPATH": str(src or REPO / "src")}
    if trace:
        (log.parent / "trace").mkdir(exist_ok=True)
        (log.parent / "trace" / "sitecustomize.py").write_text(_TRACE)
        env.update(PYTHONPATH=f"{log.parent / 'trace'}{os.pathsep}{env['PYTHONPATH']}", SKINLESION_BENCH_TRACE=str(trace))
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit, env=env)
    svc = Service.__new__(Service)
    svc.port, svc.url, svc.proc = port, f"http://127.0.0.1:{port}", proc
    svc.wait_ready(600)
    return svc


def _png(side: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (180, 120, 100)).save(buf, "PNG")
    return buf.getvalue()


def _sequential(url: str, data: bytes, n: int) -> dict:
    import httpx

    lat, errors = [], 0
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(n):
            t0 = time.perf_counter()
            try:
                ok = c.post("/v1/analyse", files={"images": (f"r{i}.jpg", data, "image/jpeg")}).status_code == 200
            except httpx.TransportError:
                ok = False
            lat.append((time.perf_counter() - t0) * 1000)
            errors += not ok
    return {"p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "errors": errors, "requests": n}


def _attack(svc, small: bytes, requests: int, log: Path) -> dict:
    """(a) one real client before and during 1,100 idle connections and a header trickler."""
    sys.path.insert(0, str(REPO))
    from tests.serve_support import Trickler

    res = {"idle": _sequential(svc.url, small, requests)}
    before = len(log.read_text().splitlines())
    socks = []
    for _ in range(1100):
        try:
            socks.append(socket.create_connection(("127.0.0.1", svc.port), timeout=5))
        except OSError:
            break
    trickler = Trickler(svc.port, every=1.0, repeat=10).start()  # one header byte a second
    res["under_attack"] = _sequential(svc.url, small, requests)
    res["under_attack"]["idle_connections_opened"] = len(socks)
    trickler.close()
    for s_ in socks:
        s_.close()
    lines = log.read_text().splitlines()[before:]
    res["log_lines_during_attack"] = len(lines)
    res["log_lines_during_attack_not_access"] = sum('HTTP/1.1"' not in x for x in lines)
    return res


def _metric(url: str, name: str) -> float:
    import httpx

    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def _timeout_case(svc, files, small: bytes, idle_p50_ms: float) -> dict:
    """(c) a request of 32 big PNGs times out: when is its slot free (the abandoned count moves and nothing is
    in progress, polled every 20 ms), and how long does the next small request, sent at once, take?"""
    import threading

    import httpx

    abandoned = _metric(svc.url, "skinlesion_analyses_abandoned_total")
    t0 = time.perf_counter()
    r = httpx.post(svc.url + "/v1/analyse", files=files, timeout=60)
    t1 = time.perf_counter()
    nxt: dict = {}

    def send_next():
        n = httpx.post(svc.url + "/v1/analyse", files={"images": ("next.jpg", small, "image/jpeg")}, timeout=60)
        nxt.update(status=n.status_code, seconds=time.perf_counter() - t1)

    th = threading.Thread(target=send_next)
    th.start()
    freed = None
    while time.perf_counter() - t1 < 60:
        if _metric(svc.url, "skinlesion_analyses_abandoned_total") > abandoned:
            freed = time.perf_counter() - t1
            break
        time.sleep(0.02)
    th.join()
    return {
        "timed_out_status": r.status_code,
        "timed_out_after_s": round(t1 - t0, 2),
        "slot_free_after_s": None if freed is None else round(freed, 2),
        "next_status": nxt.get("status"),
        "next_latency_s": round(nxt.get("seconds", float("nan")), 2),
        "idle_p50_s": round(idle_p50_ms / 1000, 2),
        "next_started_after_s": round(nxt.get("seconds", float("nan")) - idle_p50_ms / 1000, 2),
    }


_TRACE = '''"""Loaded by the served process in benchmarks/serve_load.py part (d) (its PYTHONPATH): when each
request's headers were parsed and when its status line was written, by the client's port; and each pass of the
event loop that took over 2 ms: its wall time outside the selector's wait and the loop thread's CPU time in it
(less CPU than wall: the thread waited for the GIL or a core). Written at exit."""
import atexit, json, os, selectors, time
from asyncio import base_events, selector_events

import h11
from uvicorn.protocols.http import h11_impl

_log, _current = [], [None]
_handle, _next, _write = h11_impl.H11Protocol.handle_events, h11.Connection.next_event, selector_events._SelectorSocketTransport.write


def handle_events(self):
    _current[0] = self
    try:
        return _handle(self)
    finally:
        _current[0] = None


def next_event(self):
    event = _next(self)
    if isinstance(event, h11.Request) and _current[0] is not None and _current[0].client:
        _log.append((time.perf_counter(), "headers", _current[0].client[1], 0))
    return event


def write(self, data):
    if bytes(data[:9]) == b"HTTP/1.1 ":
        peer = self.get_extra_info("peername")
        _log.append((time.perf_counter(), "status", peer[1] if peer else 0, int(bytes(data[9:12]))))
    return _write(self, data)


_select, _run_once, _waited = selectors.EpollSelector.select, base_events.BaseEventLoop._run_once, [0.0]


def select(self, timeout=None):
    t = time.perf_counter()
    try:
        return _select(self, timeout)
    finally:
        _waited[0] += time.perf_counter() - t


def run_once(self):
    t, cpu, _waited[0] = time.perf_counter(), time.thread_time(), 0.0
    _run_once(self)
    wall = time.perf_counter() - t - _waited[0]
    if wall > 0.002:
        _log.append((t, "pass", round(wall * 1000, 2), round((time.thread_time() - cpu) * 1000, 2)))


h11_impl.H11Protocol.handle_events, h11.Connection.next_event = handle_events, next_event
selectors.EpollSelector.select, base_events.BaseEventLoop._run_once = select, run_once
selector_events._SelectorSocketTransport.write = write
atexit.register(lambda: open(os.environ["SKINLESION_BENCH_TRACE"], "w").write(json.dumps(_log)))
'''


def _burst_request(small: bytes) -> bytes:
    boundary = "burstboundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=images; filename=b.jpg\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        + small
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return (
        f"POST /v1/analyse HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _burst_client(port: int, n: int, request: bytes) -> list[dict]:
    """n connections opened first, then every request written in one pass of the loop; per request the
    client's port, when it was written, when its last byte was in the kernel, when its status line came."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    for _, w in conns:
        w.transport.set_write_buffer_limits(0)  # drain() returns once every byte is handed to the kernel

    async def one(reader, writer, written):
        got = {"port": writer.get_extra_info("sockname")[1], "written": written}

        async def sent():
            try:
                await writer.drain()
                got["sent"] = time.perf_counter()
            except OSError:
                got["sent"] = None  # the server closed before taking the whole body (after its answer)

        async def answered():
            try:
                line = await reader.readline()
                got["status_at"] = time.perf_counter()
                head = (line + await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in head[1:] if x)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                kind = headers.get("content-type", "")
                got.update(status=int(head[0].split()[1]), kind=kind, retry_after=headers.get("retry-after"))
                got["detail"] = json.loads(body).get("detail", "") if "json" in kind else body[:80].decode("latin-1")
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                got.update(status=-1, kind="", retry_after=None, detail=str(e), status_at=time.perf_counter())

        await asyncio.gather(sent(), answered())
        writer.close()
        return got

    loop = asyncio.get_running_loop()
    tasks = []
    for reader, writer in conns:
        written = time.perf_counter()
        writer.write(request)
        tasks.append(loop.create_task(one(reader, writer, written)))
    return await asyncio.gather(*tasks)


def _burst(svc, small: bytes, out: Path, trace: Path, n: int = 150) -> dict:
    """(d) n requests truly at once, from one asyncio client in its own process (the same nice as the
    service): n connections opened first, then every request written in one pass. Per answer kind, the
    client's times (from its write, and from its last byte sent: negative when the answer came first)
    and the service's (from the request's headers parsed to its status line written, from the trace)."""
    req = out / "burst-request.bin"
    req.write_bytes(_burst_request(small))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--burst-client", str(svc.port), str(n), str(req)]
    got = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    svc.stop()  # the service writes its trace at exit
    trace.with_name(trace.name.replace(".trace.", ".client.")).write_text(json.dumps(got))
    server = {}
    if trace.exists():
        headers = {}
        for t, what, port, status in json.loads(trace.read_text()):
            if what == "headers":
                headers[port] = t
            elif what == "status" and port in headers and port not in server:
                server[port] = (t - headers[port]) * 1000
    t0 = min(g["written"] for g in got)
    refused_by = max((g["status_at"] for g in got if g["status"] == 503 and "busy" in g["detail"]), default=t0)
    passes = (
        [(w, c) for t, what, w, c in json.loads(trace.read_text()) if what == "pass" and t0 <= t <= refused_by] if trace.exists() else []
    )

    def ms(xs):
        xs = [x for x in xs if x is not None]
        return {"p50": round(_pct(xs, 50), 1), "max": round(max(xs), 1), "n": len(xs)} if xs else None

    def kinds(sel):
        rows = [g for g in got if sel(g)]
        return {
            "count": len(rows),
            "client_from_write_ms": ms([(g["status_at"] - g["written"]) * 1000 for g in rows]),
            "client_from_last_byte_ms": ms([(g["status_at"] - g["sent"]) * 1000 for g in rows if g.get("sent")]),
            "client_from_burst_start_ms": ms([(g["status_at"] - t0) * 1000 for g in rows]),
            "server_headers_to_status_ms": ms([server.get(g["port"]) for g in rows]),
        }

    busy = lambda g: g["status"] == 503 and "busy" in g["detail"]  # noqa: E731
    other = [(g["status"], g["detail"][:60]) for g in got if g["status"] != 200 and not busy(g)]
    return {
        "requests_at_once": n,
        "served": kinds(lambda g: g["status"] == 200),
        "refused_busy_503": kinds(busy),
        "refused_with_retry_after": sum(1 for g in got if busy(g) and g["retry_after"]),
        "writes_took_ms": round((max(g["written"] for g in got) - t0) * 1000, 1),
        "loop_until_last_refusal": {  # the service's event loop from the first write to the last busy 503 received
            "window_ms": round((refused_by - t0) * 1000, 1),
            "passes_over_2ms": len(passes),
            "their_wall_ms": round(sum(w for w, _ in passes), 1),
            "their_cpu_ms": round(sum(c for _, c in passes), 1),
            "longest_ms": max((w for w, _ in passes), default=0),
        },
        "other": other[:5],
        "other_count": len(other),
        "plain_text_or_500": sum(1 for g in got if g["status"] == 500 or (g["status"] > 0 and "json" not in g["kind"])),
    }


def _urllib_413(svc) -> str:
    import urllib.error
    import urllib.request

    body = b"--b\r\nContent-Disposition: form-data; name=images; filename=a.jpg\r\n\r\n" + os.urandom(25 * 2**20) + b"\r\n--b--\r\n"
    req = urllib.request.Request(svc.url + "/v1/analyse", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    try:
        urllib.request.urlopen(req, timeout=60)
        return "no refusal"
    except urllib.error.HTTPError as e:
        return f"{e.code} {json.loads(e.read())['detail']}"
    except OSError as e:
        return f"transport error: {e}"


def _memory(svc, files) -> dict:
    """(b) the worker's RSS around one request of 32 solid 7745x7745 PNGs, and each second for 10 s after."""
    import threading

    import httpx

    pid = svc.proc.pid  # one worker: uvicorn serves in the CLI's own process
    time.sleep(5)  # the heat-map weights (if any) finish loading in the background
    base, base_anon = _rss_mib(pid), _rss_mib(pid, "RssAnon")
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib(pid))
            time.sleep(0.02)

    th = threading.Thread(target=sample)
    th.start()
    t0 = time.perf_counter()
    r = httpx.post(svc.url + "/v1/analyse", files=files, timeout=600)
    took = time.perf_counter() - t0
    done.set()
    th.join()
    after, anon = {}, {}
    for k in range(11):
        after[str(k)], anon[str(k)] = round(_rss_mib(pid)), round(_rss_mib(pid, "RssAnon"))
        time.sleep(1)
    return {
        "status": r.status_code,
        "seconds": round(took, 1),
        "rss_before_mib": round(base),
        "peak_rss_mib": round(peak[0]),
        "rss_after_mib": {k: v for k, v in after.items() if k in ("0", "1", "5", "10")},
        "anon_before_mib": round(base_anon),
        "anon_after_mib": {k: v for k, v in anon.items() if k in ("0", "10")},
        "body_mib": round(sum(len(f[1][1]) for f in files) / 2**20, 1),
    }


def hostile(out: Path, parts: str = "acdbmn", requests: int = 40, srcs: dict | None = None) -> dict:
    """The issue-25 targets; ``parts``: a (connections), c (timeout), d (burst), b (413 via urllib), m (memory,
    the defaults: heat maps on), n (memory, ``--no-heatmaps``). ``srcs``: label -> the package code to serve
    (e.g. the previous commit's beside this one's), each part run for each, one after the other."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))  # this client holds the 1,100 sockets
    out.mkdir(parents=True, exist_ok=True)
    srcs = srcs or {"this": REPO / "src"}
    found = default_images()
    small = found[0].read_bytes() if found else _png(300)
    res: dict = {"uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    files: list = []
    if "c" in parts or "m" in parts or "n" in parts:
        big = _png(7745)
        files = [("images", (f"big{i}.png", big, "image/png")) for i in range(32)]

    def each(key, args, run, nofile=None, trace=False):
        for label, src in srcs.items():
            log = out / f"{key}-{label}.log"
            svc = _logged_service(args, log, nofile=nofile, src=src, trace=log.with_suffix(".trace.json") if trace else None)
            try:
                res.setdefault(key, {})[label] = run(svc, log)
            finally:
                res.setdefault(key, {}).setdefault(label, {})["exit"] = svc.stop()
                res[key][label]["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    if "a" in parts or "c" in parts or "b" in parts:  # the common 1,024 descriptor limit, --timeout 2

        def run_a(svc, log):
            r, idle = {}, None
            if "a" in parts:
                r["connections"] = _attack(svc, small, requests, log)
                idle = r["connections"]["idle"]["p50_ms"]
            if "c" in parts:
                idle = idle or _sequential(svc.url, small, 10)["p50_ms"]
                r["timeout"] = _timeout_case(svc, files, small, idle)
            if "b" in parts:
                r["urllib_413"] = _urllib_413(svc)
            return r

        each("a", ["--concurrency", "1", "--timeout", "2", "--no-heatmaps"], run_a, nofile=1024)
    if "d" in parts:  # --concurrency 1, the default queue (64) and timeout (30 s)
        each(
            "burst",
            ["--concurrency", "1", "--no-heatmaps"],
            lambda svc, log: _burst(svc, small, out, log.with_suffix(".trace.json")),
            trace=True,
        )
    if "m" in parts:  # the defaults (heat maps on), a long timeout
        each("memory", ["--timeout", "600"], lambda svc, log: _memory(svc, files))
    if "n" in parts:  # no heat maps (no PyTorch in the worker)
        each("memory_no_heatmaps", ["--timeout", "600", "--no-heatmaps"], lambda svc, log: _memory(svc, files))
    return res


if __name__ == "__main__":
    if sys.argv[1:2] == ["--burst-client"]:  # part (d)'s client, in its own process: PORT N REQUEST-FILE
        port, n, request = int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]).read_bytes()
        print(json.dumps(asyncio.run(_burst_client(port, n, request))))
    elif "--hostile" in sys.argv:
        out = Path(sys.argv[sys.argv.index("--json") + 1]) if "--json" in sys.argv else None
        parts = sys.argv[sys.argv.index("--parts") + 1] if "--parts" in sys.argv else "acdbmn"
        srcs = {}  # --src LABEL=DIR (repeatable): serve each part from each of these package trees in turn
        for i, a in enumerate(sys.argv):
            if a == "--src":
                label, _, path = sys.argv[i + 1].partition("=")
                srcs[label] = Path(path).resolve()
        result = hostile(Path("runs/serve_hostile"), parts, srcs=srcs or None)
        print(json.dumps(result, indent=2))
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))
    else:
        main()
