"""Cold start of the web app: from `skinlesion app` to the first usable page, and the server's memory.

Starts `skinlesion app` (the shipped model; its ONNX export is built at install time), then measures
  - health: the server answers /_stcore/health;
  - first page: a fresh session (the browser's websocket protocol, as benchmarks/app_load.py speaks it)
    has the page's script run to its end and shows the uploader and the model card's back end;
  - first result: that session's first upload of a real image has its analysis;
and the server's RSS (the app process and its children) after each step. Repeats --runs times.

    python benchmarks/cold_start.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_load import SHARED, Session, _free_port, _rss_mib  # noqa: E402


def once(model: str, image: Path) -> dict:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "skinlesion.cli", "app", "--model", model, "--port", str(port), "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            try:
                if urllib.request.urlopen(base + "/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.05)
            if server.poll() is not None:
                raise SystemExit("the app did not start")
        health = time.perf_counter() - t0

        async def page_then_result():
            s = Session(base)
            await s.open()
            first_page = time.perf_counter() - t0
            texts = s.first_texts
            rss_page = _rss_mib(server.pid)
            await s.upload(image.name, image.read_bytes())
            first_result = time.perf_counter() - t0
            await s.close()
            return first_page, texts, rss_page, first_result

        first_page, texts, rss_page, first_result = asyncio.run(page_then_result())
        backend = next((t.split("**Back end:** ")[1].split()[0] for t in texts if "**Back end:** " in t), "?")
        return {
            "health_s": health,
            "first_page_s": first_page,
            "first_result_s": first_result,
            "rss_first_page_mib": rss_page,
            "rss_after_result_mib": _rss_mib(server.pid),
            "back_end_shown": backend,
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default="default")
    ap.add_argument("--image", default=str(SHARED / "fullres" / "ISIC_0024310.jpg"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    runs = [once(args.model, Path(args.image)) for _ in range(args.runs)]
    summary = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "back_end_shown"}
    summary["back_end_shown"] = sorted({r["back_end_shown"] for r in runs})
    summary["runs"] = runs
    print(
        f"{args.runs} cold starts (median): health {summary['health_s']:.2f} s, first usable page {summary['first_page_s']:.2f} s, "
        f"first result {summary['first_result_s']:.2f} s; server RSS {summary['rss_first_page_mib']:.0f} MiB at the first page, "
        f"{summary['rss_after_result_mib']:.0f} MiB after the first result; back end shown: {', '.join(summary['back_end_shown'])}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
