"""Reader-study load: N readers answering at once, through the REST routes and/or the app's reading page.

``--via rest`` (the default): each reader (one thread, its own HTTP connection) loops ``GET next``,
``POST answers`` (in the assisted arm the revision too) against ``skinlesion serve --study-db``.
``--via app``: each reader is one browser tab on ``skinlesion app --study-db`` without the browser
(:mod:`_streamlit_ws`): the websocket opened with the query of the reader's invite link
(``/?study=ID&token=TOKEN``, as ``skinlesion study invite --link`` prints it), the page read from the
forward messages, each answer sent as the form's submission (a rerun carrying the diagnosis and management
radios, the confidence slider and the lock button's trigger), in the assisted arm the revision the same
way; each case's image is fetched from the media URL the page gives and must be nearest to that case's own of
all the study's images (`wrong_image`; nearest, not byte for byte, as an older page re-encoded it as JPEG).
``--via both``: the first half of the readers through REST, the second half through the app, at once,
against the same database (each half has both arms).

Measured per path: answer-to-next-case latency (REST: from sending ``POST answers`` to holding ``GET
next``'s case; app: from sending the answer's rerun to holding the next case's image element in the
forward messages, or the page's "every case read" for the last answer); lost answers (locked for the
reader -- a 201, or a page that moved on without an error -- but not in the database), duplicated ones
(two rows for one reader, case and phase), mismatched ones (stored with another diagnosis, management or
confidence than sent), against SQLite (WAL) and a real PostgreSQL server (a throwaway cluster, as the
tests start).

    PYTHONPATH=src python benchmarks/study_load.py --readers 20 --cases 30 --backend sqlite postgresql [--think 1]
    PYTHONPATH=src python benchmarks/study_load.py --readers 20 --cases 30 --think 1 --via both
    PYTHONPATH=src python benchmarks/study_load.py --think 1 --src old=/tmp/old/src --src new=src   # two versions

``--think S``: each reader looks at a case for 0.5-1.5 x S seconds before answering (a reader of a real study
takes seconds to minutes); 0, the default, sends every answer back to back (a stress test).

The servers are started on 127.0.0.1 and waited for (the REST service until its model is loaded, the app
until one page has run), so that starting does not compete with the readers, then stopped; the database
lives in a temp folder. They inherit the environment, so Streamlit's own options can be set there (e.g.
``STREAMLIT_SERVER_MAX_MESSAGE_SIZE``; ``skinlesion app`` itself turns off, on its command line, the full
``gc.collect(2)`` Streamlit runs after every script run by default: ``--runner.postScriptGC false``).
"""

from __future__ import annotations

import argparse
import asyncio
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
from urllib.parse import urlencode, urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _streamlit_ws beside this file, however this is loaded

from _streamlit_ws import StreamlitSession, free_port, wait_healthy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MANAGEMENT = ("excise", "follow up", "reassure")


class ServerDidNotStart(RuntimeError):
    """A server the benchmark starts did not become ready (the message ends with its log's tail); ``stage``:
    "start" when it never answered at all, "page" when the app answered but its reading page failed."""

    def __init__(self, message: str, stage: str = "start"):
        super().__init__(message)
        self.stage = stage


def _png(rng) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_study(db: str, n_cases: int, n_readers: int, seed: int = 0):
    """(store, study id, [(arm, token)] per reader, the label set) of a fresh synthetic study in both arms."""
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
    return store, sid, [(arm, t) for _, arm, t in invite(store, sid, n_readers)], list(CODES)


def _start(cmd: list[str], log: Path, src: Path | None):
    env = {**os.environ, "PYTHONPATH": str(src or REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "skinlesion.cli", *cmd], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _stop(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


def serve(db: str, log: Path, src: Path | None = None):
    """``skinlesion serve --study-db DB`` on a free port, once its model is loaded: (process, base URL)."""
    import httpx

    port = free_port()
    proc = _start(["serve", "--port", str(port), "--study-db", db], log, src)
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
    _stop(proc)
    raise ServerDidNotStart(f"the study service did not become ready:\n{log.read_text()[-2000:]}")


def serve_app(db: str, log: Path, src: Path | None = None, wait_s: float = 900):
    """``skinlesion app --study-db DB`` on a free port, once its health check answers: (process, base URL)."""
    port = free_port()
    proc = _start(["app", "--study-db", db, "--port", str(port), "--address", "127.0.0.1"], log, src)
    base = f"http://127.0.0.1:{port}"
    if wait_healthy(base, proc, wait_s):
        try:  # one page run first (the reading page's imports, the store opened), as the REST service's model is waited for
            asyncio.run(_warm_up(base, wait_s))
            return proc, base
        except (OSError, TimeoutError, RuntimeError) as exc:
            why, stage = f"its first page failed ({type(exc).__name__}: {exc})", "page"
    else:
        why, stage = "its health check never answered", "start"
    _stop(proc)
    raise ServerDidNotStart(f"the app did not become ready: {why}:\n{log.read_text()[-2000:]}", stage)


async def _warm_up(base: str, timeout: float) -> None:
    tab = ReadingTab(base, urlencode({"study": "warm-up", "token": "none"}))
    await tab.connect()
    try:
        await tab.rerun([])
        page = await tab.page(None, timeout)
        if not any("not valid" in p for p in page.problems):
            raise RuntimeError(f"the reading page did not refuse an unknown study: {page.problems}")
    finally:
        await tab.close()


class Tally:
    """What one path's readers saw, appended to from their threads (list.append is atomic)."""

    def __init__(self):
        self.lat: list[float] = []
        self.got: list[tuple] = []  # (token, case position, phase, diagnosis, management, confidence), one per locked answer
        self.errors: list[str] = []
        self.wrong_image: list[tuple] = []  # (token, case): the page showed another image as this case


def _choose(rng, labels: list[str]) -> tuple[int, str, int]:
    return int(rng.integers(len(labels))), str(rng.choice(MANAGEMENT)), int(rng.integers(1, 6))


def read_all(url: str, sid: str, token: str, rng, tally: Tally, labels: list[str], think: float = 0.0) -> None:
    """One REST reader: GET next, POST answers, until done."""
    import httpx

    with httpx.Client(base_url=f"{url}/v1/studies/{sid}", headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        case = c.get("/next").json()
        while not case["done"]:
            dx, mgmt, conf = _choose(rng, labels)
            body = {"case": case["case"], "diagnosis": labels[dx], "management": mgmt, "confidence": conf, "phase": case["phase"]}
            if think:  # the reader looks at the case: 0.5 to 1.5 times --think seconds
                time.sleep(think * rng.uniform(0.5, 1.5))
            t = time.perf_counter()
            r = c.post("/answers", json=body)
            if r.status_code != 201:
                tally.errors.append(f"REST {r.status_code}: {r.text[:200]}")
                return
            tally.got.append((token, case["case"], case["phase"], labels[dx], mgmt, conf))
            nxt = c.get("/next")
            tally.lat.append(time.perf_counter() - t)
            case = nxt.json()


# ---- the app path: one reading tab per reader over Streamlit's websocket -----------------------------------------


class Page:
    """What one script run of the reading page showed (from its forward messages)."""

    def __init__(self):
        self.case: int | None = None  # the "Case N" subheader
        self.phase = "solo"  # "Case N: your revision, ..." is the assisted phase
        self.image_url = ""  # the first image after the subheader: the case's own
        self.radios: list[tuple[str, list[str]]] = []  # (widget id, options) in page order: diagnosis, management
        self.slider: tuple[str, list[str]] | None = None  # the confidence select_slider
        self.submit = ""  # the form's lock button
        self.problems: list[str] = []  # errors, warnings, exceptions the page showed
        self.done = False  # "You have read every case"
        self.progress = ""
        self.t_next: float | None = None  # when the next case's image (or the done message) arrived


class ReadingTab(StreamlitSession):
    """A reader's browser tab on the reading page, opened with the query string of the reader's invite link."""

    ping_interval = None  # as a browser: no client keepalive pings

    async def page(self, answered: tuple[int, str] | None, timeout: float) -> Page:
        """Read forward messages until the page's script run ends (a run stopped for ``st.rerun`` is followed
        into the next one); ``answered``: the (case, phase) just submitted, whose successor's image stops the clock."""
        from streamlit.proto.Alert_pb2 import Alert
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
        from streamlit.proto.Slider_pb2 import Slider

        page = Page()
        while True:
            msg = await self.next_msg(timeout)
            kind = msg.WhichOneof("type")
            if kind == "new_session":  # a script run begins: what the tab shows is this run's
                t_next, page = page.t_next, Page()
                page.t_next = t_next
            elif kind == "script_finished":
                if msg.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    if msg.script_finished != ForwardMsg.FINISHED_SUCCESSFULLY:
                        page.problems.append(f"script finished with status {msg.script_finished}")
                    return page
            elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                el = msg.delta.new_element
                t = el.WhichOneof("type")
                if t == "heading" and page.case is None and el.heading.body.startswith("Case "):
                    head = el.heading.body
                    page.case = int(head.split()[1].rstrip(":"))
                    page.phase = "assisted" if "your revision" in head else "solo"
                elif t == "imgs" and page.case is not None and not page.image_url and el.imgs.imgs:
                    page.image_url = el.imgs.imgs[0].url
                    if answered is not None and page.t_next is None and (page.case, page.phase) != answered:
                        page.t_next = time.perf_counter()
                elif t == "alert":
                    fmt = el.alert.format
                    if fmt == Alert.SUCCESS and "read every case" in el.alert.body:
                        page.done = True
                        if answered is not None and page.t_next is None:
                            page.t_next = time.perf_counter()
                    elif fmt in (Alert.ERROR, Alert.WARNING):
                        page.problems.append(el.alert.body)
                elif t == "exception":
                    page.problems.append(f"exception: {el.exception.type} {el.exception.message}")
                elif t == "radio":
                    page.radios.append((el.radio.id, list(el.radio.options)))
                elif t == "slider" and el.slider.type == Slider.SELECT_SLIDER:
                    page.slider = (el.slider.id, list(el.slider.options))
                elif t == "button" and el.button.is_form_submitter:
                    page.submit = el.button.id
                elif t == "progress":
                    page.progress = el.progress.text

    @staticmethod
    def answer_states(page: Page, dx: int, mgmt: str, conf: int) -> list:
        """The widget states the browser sends when the form is submitted: both radios, the slider, the button's trigger."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        (dx_id, dx_options), (m_id, m_options) = page.radios[:2]
        if mgmt not in m_options or str(conf) not in page.slider[1]:
            raise RuntimeError(f"the page offers management {m_options} and confidence {page.slider[1]}")
        slider = WidgetState(id=page.slider[0])
        slider.string_array_value.data.append(str(conf))
        return [
            WidgetState(id=dx_id, string_value=dx_options[dx]),
            WidgetState(id=m_id, string_value=mgmt),
            slider,
            WidgetState(id=page.submit, trigger_value=True),
        ]


def _pixels(data: bytes):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _nearest_case(shown, images: dict) -> int | None:
    """The case whose image the shown one is closest to (Streamlit re-encodes an RGB PNG as JPEG, so not equal)."""
    same = {pos: float(np.abs(img - shown).mean()) for pos, img in images.items() if img.shape == shown.shape}
    return min(same, key=same.get) if same else None


async def _app_reader(base: str, sid: str, token: str, rng, tally: Tally, labels: list[str], think: float, images: dict, timeout: float):
    link = f"{base}/?{urlencode({'study': sid, 'token': token})}"  # as `skinlesion study invite --link` prints it
    tab = ReadingTab(base, urlsplit(link).query)
    await tab.connect()
    try:
        await tab.rerun([])  # the browser's first run of the page
        try:
            page = await tab.page(None, timeout)
        except TimeoutError:
            raise TimeoutError(f"no first page within {timeout:.0f} s") from None
        while True:
            if page.problems:
                tally.errors.append(f"app: {page.problems[0]}")
                return
            if page.done:
                return
            if page.case is None or not page.image_url or len(page.radios) < 2 or page.slider is None or not page.submit:
                tally.errors.append(
                    f"app: the page shows no case form (case {page.case}, {len(page.radios)} radios, progress {page.progress!r})"
                )
                return
            shown = await asyncio.to_thread(tab.media, page.image_url)  # the browser's <img>
            if _nearest_case(_pixels(shown), images) != page.case:
                tally.wrong_image.append((token, page.case))
            dx, mgmt, conf = _choose(rng, labels)
            states = tab.answer_states(page, dx, mgmt, conf)
            if think:
                await asyncio.sleep(think * rng.uniform(0.5, 1.5))
            answered = (page.case, page.phase)
            t = time.perf_counter()
            await tab.rerun(states)
            try:
                nxt = await tab.page(answered, timeout)
            except TimeoutError:
                raise TimeoutError(f"no page within {timeout:.0f} s of answering case {answered}") from None
            if nxt.problems or nxt.t_next is None:  # refused, failed, or the same case and phase again: not locked
                tally.errors.append(f"app: case {answered} not locked: {nxt.problems or 'the page did not move on'}")
                return
            tally.got.append((token, *answered, labels[dx], mgmt, conf))
            tally.lat.append(nxt.t_next - t)
            page = nxt
    finally:
        await tab.close()


def read_all_app(base: str, sid: str, token: str, rng, tally: Tally, labels: list[str], think: float, images: dict, timeout: float) -> None:
    """One app reader, in its own thread and event loop (as REST readers have their own thread)."""
    try:
        asyncio.run(_app_reader(base, sid, token, rng, tally, labels, think, images, timeout))
    except Exception as exc:  # counted and reported: one reader's failure must not stop the others
        tally.errors.append(f"app: {type(exc).__name__}: {exc}")


# ---- one run ---------------------------------------------------------------------------------------------------


def _summary(tally: Tally, stored: dict, wall: float) -> dict:
    lat_ms = np.array(tally.lat) * 1000
    pct = lambda q: round(float(np.percentile(lat_ms, q)), 1) if len(lat_ms) else None
    return {
        "answers_locked": len(tally.got),
        "lost": sum(1 for tok, case, phase, *_ in tally.got if (tok, case, phase) not in stored),
        "mismatched": sum(1 for tok, case, phase, *v in tally.got if stored.get((tok, case, phase), tuple(v)) != tuple(v)),
        "errors": len(tally.errors),
        "error_examples": tally.errors[:3],
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "max_ms": round(float(lat_ms.max()), 1) if len(lat_ms) else None,
        "answers_per_s": round(len(tally.got) / wall, 1),
    }


def run_backend(
    db: str,
    readers: int,
    cases: int,
    tmp: Path,
    think: float = 0.0,
    src: Path | None = None,
    via: str = "rest",
    timeout: float = 120.0,
) -> dict:
    from sqlalchemy import select

    from skinlesion.study.store import Answer, Case, Reader

    store, sid, invited, labels = make_study(db, cases, readers)
    n_rest = {"rest": readers, "app": 0, "both": readers // 2}[via]
    paths = ["rest"] * n_rest + ["app"] * (readers - n_rest)
    with store.session() as s:
        images = {pos: _pixels(img) for pos, img in s.execute(select(Case.position, Case.image).where(Case.study_id == sid))}
    procs, tallies = [], {p: Tally() for p in set(paths)}
    try:
        url = base = None
        t_start = time.perf_counter()
        if "rest" in paths:
            proc, url = serve(db, tmp / "serve.log", src)
            procs.append(proc)
        t_rest = time.perf_counter()
        if "app" in paths:
            proc, base = serve_app(db, tmp / "app.log", src)
            procs.append(proc)
        startup = {"rest": round(t_rest - t_start, 1), "app": round(time.perf_counter() - t_rest, 1)}
        threads = [
            threading.Thread(
                target=read_all,
                args=(url, sid, tok, np.random.default_rng(k), tallies["rest"], labels, think),
            )
            if path == "rest"
            else threading.Thread(
                target=read_all_app,
                args=(base, sid, tok, np.random.default_rng(k), tallies["app"], labels, think, images, timeout),
            )
            for k, (path, (_, tok)) in enumerate(zip(paths, invited))
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        for proc in procs:
            _stop(proc)
    with store.session() as s:
        rows = s.execute(
            select(Reader.token_hash, Case.position, Answer.phase, Answer.diagnosis, Answer.management, Answer.confidence)
            .join(Reader, Reader.id == Answer.reader_id)
            .join(Case, Case.id == Answer.case_id)
            .where(Answer.study_id == sid)
        ).all()
    store.close()
    from skinlesion.study.store import token_hash

    by_hash = {token_hash(tok): tok for _, tok in invited}
    stored: dict = {}
    duplicated = 0
    for h, case, phase, dx, mgmt, conf in rows:
        key = (by_hash[h], case, phase)
        duplicated += key in stored
        stored[key] = (dx, mgmt, int(conf))
    expected = sum(cases * (2 if arm == "assisted" else 1) for arm, _ in invited)
    per_path = {p: _summary(t, stored, wall) for p, t in tallies.items()}
    all_lat = np.array([x for t in tallies.values() for x in t.lat]) * 1000
    out = {
        "via": via,
        "readers": readers,
        "readers_rest": n_rest,
        "readers_app": readers - n_rest,
        "cases": cases,
        "think_s": think,
        "answers_expected": expected,
        "answers_locked": sum(len(t.got) for t in tallies.values()),
        "answers_stored": len(rows),
        "lost": sum(v["lost"] for v in per_path.values()),
        "duplicated": duplicated,
        "mismatched": sum(v["mismatched"] for v in per_path.values()),
        "errors": sum(v["errors"] for v in per_path.values()),
        "wrong_image": len(tallies["app"].wrong_image) if "app" in tallies else 0,
        "p50_ms": round(float(np.percentile(all_lat, 50)), 1) if len(all_lat) else None,
        "p95_ms": round(float(np.percentile(all_lat, 95)), 1) if len(all_lat) else None,
        "max_ms": round(float(all_lat.max()), 1) if len(all_lat) else None,
        "answers_per_s": round(len(all_lat) / wall, 1),
        "wall_s": round(wall, 1),
        "startup_s": {p: startup[p] for p in sorted(tallies)},
    }
    if via == "both":
        out["paths"] = per_path
    else:
        out["error_examples"] = per_path[via]["error_examples"]
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=20)
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--think", type=float, default=0.0, help="Mean seconds a reader looks at a case before answering (0: back to back).")
    ap.add_argument("--backend", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument(
        "--via",
        default="rest",
        choices=["rest", "app", "both"],
        help="Readers answer through the REST routes, the app's reading page (its websocket), or half through each.",
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="Seconds an app reader waits for a page before counting an error.")
    ap.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="Serve from this package tree (repeatable: each backend is run with each, one after the other).",
    )
    args = ap.parse_args(argv)
    if args.readers < 1 or args.cases < 1:
        ap.error("--readers and --cases must be at least 1.")
    if args.via == "both" and args.readers < 2:
        ap.error("--via both needs at least 2 readers (half through each path).")
    srcs = {label: Path(path).resolve() for label, _, path in (a.partition("=") for a in args.src)} or {"this": None}
    sys.path.insert(0, str(REPO))
    results = []
    for backend in args.backend:
        for label, src in srcs.items():
            uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            with tempfile.TemporaryDirectory(prefix="study-load-") as tmp:
                tmp = Path(tmp)
                run = lambda db: run_backend(db, args.readers, args.cases, tmp, args.think, src, args.via, args.timeout)  # noqa: B023
                if backend == "sqlite":
                    result = run(str(tmp / "study.sqlite"))
                else:
                    from tests.study_support import PostgresCluster, new_database

                    with PostgresCluster() as server:
                        result = run(new_database(server))
            results.append({"backend": backend, "src": label, **result, "uptime": uptime})
            print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
