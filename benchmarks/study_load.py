"""Reader-study load: N readers answering at once through the REST routes of ``skinlesion serve --study-db``.

Each reader (one thread, its own HTTP connection) loops: ``GET next``, ``POST answers`` (in the assisted
arm the revision too), until done. Measured: answer-to-next-case latency (from sending an answer to having
the next case), lost answers (a 201 the database does not hold), duplicated ones (two rows for one reader,
case and phase), against SQLite (WAL) and a real PostgreSQL server (a throwaway cluster, as the tests start).

    PYTHONPATH=src python benchmarks/study_load.py --readers 20 --cases 30 --backend sqlite postgresql [--think 1]
    PYTHONPATH=src python benchmarks/study_load.py --think 1 --src old=/tmp/old/src --src new=src   # two versions

``--think S``: each reader looks at a case for 0.5-1.5 x S seconds before answering (a reader of a real study
takes seconds to minutes); 0, the default, sends every request back to back (a stress test).

The service is started on 127.0.0.1 and waited for until its model is loaded (so that loading does not
compete with the readers), then stopped; the database lives in a temp folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _png(rng) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_study(db: str, n_cases: int, n_readers: int, seed: int = 0):
    from skinlesion.classes import CODES, MALIGNANT
    from skinlesion.study.create import CaseSpec, add_study, invite
    from skinlesion.study.store import Store

    rng = np.random.default_rng(seed)
    specs = []
    for k in range(n_cases):
        p = rng.dirichlet(np.ones(len(CODES)))
        specs.append(
            CaseSpec(
                f"IMG_{k}",
                str(rng.choice(CODES)),
                _png(rng),
                dict(zip(CODES, map(float, p))),
                CODES[int(p.argmax())],
                float(sum(p[i] for i, c in enumerate(CODES) if c in MALIGNANT)),
                None,
                "fresh",
                _png(rng),
            )
        )
    store = Store(db)
    sid, _ = add_study(store, specs, labels=CODES, malignant_codes=MALIGNANT, model="benchmark", arms=("solo", "assisted"), seed=seed)
    return store, sid, [t for _, _, t in invite(store, sid, n_readers)]


def serve(db: str, log: Path, src: Path | None = None):
    import httpx

    sys.path.insert(0, str(REPO))
    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src or REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skinlesion.cli", "serve", "--port", str(port), "--study-db", db],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 900:
        try:
            if httpx.get(f"{url}/v1/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"the service did not become ready:\n{log.read_text()[-2000:]}")


def read_all(url: str, sid: str, token: str, rng, lat: list, got: list, errors: list, think: float = 0.0) -> None:
    import httpx

    from skinlesion.classes import CODES

    with httpx.Client(base_url=f"{url}/v1/studies/{sid}", headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        case = c.get("/next").json()
        while not case["done"]:
            body = {
                "case": case["case"],
                "diagnosis": str(rng.choice(CODES)),
                "management": str(rng.choice(["excise", "follow up", "reassure"])),
                "confidence": int(rng.integers(1, 6)),
                "phase": case["phase"],
            }
            if think:  # the reader looks at the case: 0.5 to 1.5 times --think seconds
                time.sleep(think * rng.uniform(0.5, 1.5))
            t = time.perf_counter()
            r = c.post("/answers", json=body)
            if r.status_code != 201:
                errors.append((r.status_code, r.text))
                return
            got.append((token, case["case"], case["phase"]))
            nxt = c.get("/next")
            lat.append(time.perf_counter() - t)
            case = nxt.json()


def run_backend(db: str, readers: int, cases: int, tmp: Path, think: float = 0.0, src: Path | None = None) -> dict:
    from sqlalchemy import func, select

    from skinlesion.study.store import Answer, Case, Reader, token_hash

    store, sid, tokens = make_study(db, cases, readers)
    proc, url = serve(db, tmp / "serve.log", src)
    lat, got, errors = [], [], []
    try:
        threads = [
            threading.Thread(target=read_all, args=(url, sid, tok, np.random.default_rng(k), lat, got, errors, think))
            for k, tok in enumerate(tokens)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    with store.session() as s:
        rows = s.execute(
            select(Reader.token_hash, Case.position, Answer.phase)
            .join(Reader, Reader.id == Answer.reader_id)
            .join(Case, Case.id == Answer.case_id)
        ).all()
        n_distinct = s.execute(
            select(func.count()).select_from(select(Answer.reader_id, Answer.case_id, Answer.phase).distinct().subquery())
        ).scalar()
    stored = {tuple(r) for r in rows}
    expected = readers * cases + (readers // 2) * cases  # the assisted half answers every case twice
    lost = sum(1 for tok, case, phase in got if (token_hash(tok), case, phase) not in stored)
    lat_ms = np.array(lat) * 1000
    return {
        "readers": readers,
        "cases": cases,
        "think_s": think,
        "answers_expected": expected,
        "answers_201": len(got),
        "answers_stored": len(rows),
        "lost": lost,
        "duplicated": len(rows) - n_distinct,
        "errors": len(errors),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1),
        "p95_ms": round(float(np.percentile(lat_ms, 95)), 1),
        "max_ms": round(float(lat_ms.max()), 1),
        "answers_per_s": round(len(got) / wall, 1),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=20)
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--think", type=float, default=0.0, help="Mean seconds a reader looks at a case before answering (0: back to back).")
    ap.add_argument("--backend", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="Serve from this package tree (repeatable: each backend is run with each, one after the other).",
    )
    args = ap.parse_args(argv)
    srcs = {label: Path(path).resolve() for label, _, path in (a.partition("=") for a in args.src)} or {"this": None}
    sys.path.insert(0, str(REPO))
    for backend in args.backend:
        for label, src in srcs.items():
            uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            with tempfile.TemporaryDirectory(prefix="study-load-") as tmp:
                tmp = Path(tmp)
                if backend == "sqlite":
                    result = run_backend(str(tmp / "study.sqlite"), args.readers, args.cases, tmp, args.think, src)
                else:
                    from tests.study_support import PostgresCluster, new_database

                    with PostgresCluster() as server:
                        result = run_backend(new_database(server), args.readers, args.cases, tmp, args.think, src)
            print(json.dumps({"backend": backend, "src": label, **result, "uptime": uptime}), flush=True)


if __name__ == "__main__":
    main()
