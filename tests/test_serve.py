"""The REST service (issue: a service others can build on): a real ``skinlesion serve`` (uvicorn) on a free
loopback port with the shipped model, driven over HTTP. Tests wait for states the server reports (an
endpoint answering, an analysis in progress in /metrics), never for fixed moments."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import pandas as pd
from PIL import Image

from skinlesion.classes import CODES
from skinlesion.predict import ROW_COLUMNS

from .conftest import free_port
from .test_bad_input_table import CASES as CLI_CASES

MAX_IMAGES = 4
RATE = 120  # per minute, per key


class running_service:
    """``skinlesion serve`` on a free loopback port, ready on entry, stopped on exit; its log is ``tmp/serve-PORT.log``."""

    def __init__(self, tmp: Path, *args: str, hold: Path | None = None, timeout: float = 90.0):
        self.tmp, self.args, self.hold, self.timeout = Path(tmp), [str(a) for a in args], hold, timeout

    def __enter__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.tmp / f"serve-{self.port}.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ)
        if self.hold is not None:
            env["SKINLESION_SERVE_TEST_HOLD"] = str(self.hold)
        cmd = [sys.executable, "-m", "skinlesion.cli", "serve", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_for(lambda: self._ready() or self.proc.poll() is not None, self.timeout, "the service to become ready", self)
        except AssertionError:
            self.__exit__(None, None, None)  # never leave a server behind a failed start
            raise
        if self.proc.poll() is not None:
            raise AssertionError(f"the service exited with {self.proc.returncode}:\n{self.read_log()}")
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v1/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def read_log(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return False


def wait_for(predicate, timeout: float, what: str, service=None):
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}" + (f":\n{service.read_log()}" if service else ""))
        time.sleep(0.05)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def one_sentence(text: str) -> bool:
    """A plain sentence: no traceback, no line break, no second sentence, ends with a full stop."""
    prose = re.sub(r"`[^`]*`", "CODE", text)  # what to type, quoted, is not a sentence break
    return bool(text) and "Traceback" not in text and "\n" not in text and not re.search(r"[.;:]\s+[A-Z]", prose) and text.endswith(".")


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic 600x450 lesion photos (at least 8) with their HAM10000-style metadata."""
    from skinlesion.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path_factory.mktemp("serve_images"), n_lesions=7, layout="flat", seed=11, min_per_class=1)
    paths = sorted((root / "images").glob("*.jpg"))
    assert len(paths) >= 8
    return root, paths


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from skinlesion.serve.keys import new_key

    folder = tmp_path_factory.mktemp("serve_keys")
    path = folder / "keys.txt"
    made = {name: new_key(path) for name in ("main", "rate", "other", "concurrency", "revoked", "cli", "bench")}
    for name in ("cli", "bench"):
        (folder / f"{name}.key").write_text(made[name] + "\n")
    return path, made


@pytest.fixture(scope="module")
def service(default_model, keys, tmp_path_factory):
    """The shipped model behind keys, a rate limit, a 1 MiB body limit, 4 images per request and one CORS origin."""
    path, _ = keys
    tmp = tmp_path_factory.mktemp("serve_main")
    args = ["--api-keys", path, "--rate", f"{RATE}/min", "--max-mb", "1", "--max-images", MAX_IMAGES, "--timeout", "120"]
    with running_service(tmp, *args, "--cors", "https://viewer.example") as s:
        yield s
        assert "Traceback" not in s.read_log()


@pytest.fixture(scope="module")
def local(default_model):
    from skinlesion.predict import Predictor

    return Predictor("default")


def client(service, keys, name="main") -> httpx.Client:
    return httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {keys[1][name]}"}, timeout=120)


def post(c: httpx.Client, files: list[tuple[str, bytes]], data=None, params=None) -> httpx.Response:
    return c.post("/v1/analyse", files=[("images", (n, b, "image/jpeg")) for n, b in files], data=data or {}, params=params)


def local_rows(local, named: list[tuple[str, bytes]], tmp: Path, meta=None, monkeypatch=None) -> list[dict]:
    """What ``predict`` writes for these files (the same names, relative to the folder they are in)."""
    from skinlesion.predict import predict_files

    for name, data in named:
        (tmp / name).write_bytes(data)
    monkeypatch.chdir(tmp)
    rows = predict_files(local, [Path(n) for n, _ in named], meta=meta)
    return json.loads(json.dumps([{c: r.get(c) for c in ROW_COLUMNS} for r in rows]))  # as JSON carries them


# ---- health, readiness, the model --------------------------------------------------------------


def test_health_ready_and_model_describe_the_shipped_bundle(service, keys, default_model):
    from skinlesion.bundle import bundle_hash, load_config
    from skinlesion.report import NOTICE

    assert httpx.get(f"{service.url}/v1/health").json() == {"status": "alive"}
    assert httpx.get(f"{service.url}/v1/ready").json()["ready"] is True
    with client(service, keys) as c:
        m = c.get("/v1/model").json()
    cfg = load_config(default_model, check_backbones=False)
    assert m["name"] == cfg.name and m["backend"] == "onnx"
    assert m["bundle_sha256"] == bundle_hash(default_model) and m["model_hash"] == m["bundle_sha256"][:12]
    assert [c["code"] for c in m["classes"]] == list(CODES) and m["columns"] == ROW_COLUMNS
    assert m["input"]["preprocess"] == cfg.preprocess and m["input"]["patient_data"]["used"] is True
    for block in ("refer", "conformal", "tier"):
        assert m["rules"][block] == getattr(cfg, block)
    assert m["metrics"] == json.loads(json.dumps(cfg.metrics)) and m["created_with"] == cfg.created_with
    assert m["notice"] == NOTICE and "CC BY-NC-SA 4.0" in m["license"]
    assert m["service"]["max_images"] == MAX_IMAGES and m["service"]["rate"] == f"{RATE}/min"
    schema = httpx.get(f"{service.url}/openapi.json").json()
    form = schema["paths"]["/v1/analyse"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"images", "age", "sex", "localization"} <= set(form["properties"])
    assert set(ROW_COLUMNS) <= set(schema["components"]["schemas"]["ImageResult"]["properties"])
    assert httpx.get(f"{service.url}/docs").status_code == 200


# ---- analyse --------------------------------------------------------------------------------------


def test_analyse_answers_exactly_the_rows_predict_writes(service, keys, images, local, tmp_path, monkeypatch):
    root, paths = images
    named = [(p.name, p.read_bytes()) for p in paths[:3]]
    with client(service, keys) as c:
        one = post(c, named[:1])
        assert one.status_code == 200, one.text
        body = one.json()
        assert body["model_hash"] == local.model_hash and list(body["images"][0]) == ROW_COLUMNS
        assert body["images"] == local_rows(local, named[:1], tmp_path, monkeypatch=monkeypatch)
        several = post(c, named)
        assert several.json()["images"] == local_rows(local, named, tmp_path, monkeypatch=monkeypatch)

        # patient data: once for every image, or once per image in order; the same as `predict --meta`
        shared_meta = {"age": "55", "sex": "male", "localization": "back"}
        r = post(c, named, data=shared_meta)
        expected = local_rows(local, named, tmp_path, {Path(n).stem: shared_meta for n, _ in named}, monkeypatch)
        assert r.status_code == 200 and r.json()["images"] == expected
        per_image = {"age": ["35", "", "80"], "sex": ["female", "male", ""], "localization": ["face", "back", "trunk"]}
        r = post(c, named, data=per_image)
        meta = {Path(n).stem: {f: per_image[f][i] for f in per_image} for i, (n, _) in enumerate(named)}
        assert r.status_code == 200 and r.json()["images"] == local_rows(local, named, tmp_path, meta, monkeypatch)
        assert r.json()["images"] != several.json()["images"]  # the patient data was used


def test_heatmap_of_one_image(service, keys, images):
    _, paths = images
    data = paths[0].read_bytes()
    with client(service, keys) as c:
        r = post(c, [("lesion.jpg", data)], params={"heatmap": "mel"})
        assert r.status_code == 200, r.text
        h = r.json()["heatmap"]
        assert h["class"] == "mel" and h["image"] == "lesion.jpg"
        heat = Image.open(io.BytesIO(base64.b64decode(h["heatmap_png"])))
        over = Image.open(io.BytesIO(base64.b64decode(h["overlay_png"])))
        side = c.get("/v1/model").json()["input"]["preprocess"]["input_size"]
        assert heat.mode == "L" and heat.size == (side, side) and over.size == Image.open(paths[0]).size
        assert np.asarray(heat).max() == 255 and np.asarray(heat).min() == 0  # scaled to the strongest evidence
        two = post(c, [("a.jpg", data), ("b.jpg", data)], params={"heatmap": "top"})
        assert two.status_code == 422 and two.json()["field"] == "heatmap" and one_sentence(two.json()["detail"])
        assert post(c, [("a.jpg", data)]).json().get("heatmap") is None


def test_a_non_image_and_a_bomb_in_a_batch_are_that_images_errors(service, keys, images):
    from skinlesion.intake import MAX_PIXELS

    _, paths = images
    side = int(np.sqrt(MAX_PIXELS)) + 100
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG", optimize=True)
    batch = [("good.jpg", paths[0].read_bytes()), ("notes.jpg", b"not an image at all"), ("bomb.png", buf.getvalue())]
    with client(service, keys) as c:
        r = post(c, batch)
    assert r.status_code == 200, r.text
    good, text, bomb = r.json()["images"]
    assert good["error"] == "" and good["top_class"] in CODES
    assert text["image"] == "notes.jpg" and "not an image" in text["error"] and text["top_class"] == ""
    assert bomb["image"] == "bomb.png" and "decompression bomb" in bomb["error"]
    assert one_sentence(text["error"]) and one_sentence(bomb["error"])


def test_concurrent_requests_answer_as_sequential_ones(service, keys, images):
    from concurrent.futures import ThreadPoolExecutor

    _, paths = images
    named = [(p.name, p.read_bytes()) for p in paths[:8]]
    with client(service, keys, "concurrency") as c:
        sequential = {n: post(c, [(n, b)]).json()["images"][0] for n, b in named}
    order = [named[i % len(named)] for i in (5, 2, 7, 0, 3, 6, 1, 4, 2, 5, 0, 7, 4, 1, 6, 3)]

    def one(item):
        with client(service, keys, "concurrency") as c:
            return item[0], post(c, [item])

    with ThreadPoolExecutor(16) as ex:
        answers = list(ex.map(one, order))
    for name, r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["images"][0] == sequential[name]


def test_load_benchmark_short_mode_sees_no_error_and_no_differing_answer(service, keys, images, tmp_path):
    """benchmarks/serve_load.py --short against the running service: 1 and 4 clients, beside the in-process predictor."""
    from .conftest import benchmark

    _, paths = images
    key = keys[0].parent / "bench.key"
    args = ["--short", "--url", service.url, "--api-key-file", key, "--max-requests", "30", "--images", *paths[:2]]
    result = benchmark("serve_load").main([str(a) for a in [*args, "--json", tmp_path / "load.json"]])
    assert [r["clients"] for r in result["service"]] == [1, 4]
    for r in result["service"]:
        assert r["requests"] > 0 and r["errors"] == 0 and r["differ"] == 0 and r["rows_equal_in_process"], r
    assert all(i["per_second"] > 0 and i["backend"] == "onnx" for r in result["service"] for i in r["in_process"])
    assert json.loads((tmp_path / "load.json").read_text())["service"] == json.loads(json.dumps(result["service"]))


# ---- who may call ------------------------------------------------------------------------------


def test_401_without_a_key_403_with_a_wrong_or_revoked_one(service, keys):
    path, made = keys
    r = httpx.get(f"{service.url}/v1/model")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and one_sentence(r.json()["detail"])
    assert httpx.post(f"{service.url}/v1/analyse", files={"images": ("a.jpg", b"x")}).status_code == 401
    assert httpx.get(f"{service.url}/v1/model", headers={"Authorization": "Basic dXNlcg=="}).status_code == 401
    for wrong in ("slk_00000000_nope", made["main"][:-2] + "xx", "garbage"):
        r = httpx.get(f"{service.url}/v1/model", headers={"Authorization": f"Bearer {wrong}"})
        assert r.status_code == 403 and one_sentence(r.json()["detail"]), r.text
    revoked = made["revoked"]
    assert httpx.get(f"{service.url}/v1/model", headers={"Authorization": f"Bearer {revoked}"}).status_code == 200
    kid = revoked.split("_")[1]
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith(kid)))
    assert httpx.get(f"{service.url}/v1/model", headers={"Authorization": f"Bearer {revoked}"}).status_code == 403
    assert "slk_" not in path.read_text() and all(k.split("_", 2)[2] not in path.read_text() for k in made.values())


def test_429_with_retry_after_per_key(service, keys):
    served = 0
    with client(service, keys, "rate") as c:
        for _ in range(2 * RATE):
            r = c.get("/v1/model")
            if r.status_code == 429:
                break
            assert r.status_code == 200
            served += 1
    assert r.status_code == 429, "no request was limited"
    assert served >= RATE and int(r.headers["retry-after"]) >= 1 and one_sentence(r.json()["detail"])
    with client(service, keys, "other") as c:  # another key has its own budget
        assert c.get("/v1/model").status_code == 200


def test_cors_only_for_the_named_origin(service):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(f"{service.url}/v1/analyse", headers={"Origin": "https://viewer.example", **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://viewer.example"
    other = httpx.options(f"{service.url}/v1/analyse", headers={"Origin": "https://elsewhere.example", **pre})
    assert "access-control-allow-origin" not in other.headers


# ---- bad input never costs the service ---------------------------------------------------------------


def _raw(port: int, head: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head)
    return s


def test_413_cuts_a_streamed_body_off_before_it_is_read_whole(service, keys):
    key = keys[1]["main"]
    boundary = "b0undary"
    head = (
        f"POST /v1/analyse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    s = _raw(service.port, head)
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="big.jpg"\r\n\r\n'.encode()
    chunk = b"\xff" * 65536
    sent = 0
    for piece in [part] + [chunk] * 20:  # 1.25 MiB of a body that would go on: the limit is 1 MiB
        s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sent += len(piece)
    # the body is never finished (no closing boundary, no last chunk): an answer now means it was not read whole
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        got = s.recv(65536)
        if not got:
            break
        answer += got
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    detail = json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"]
    assert "1 MiB" in detail and one_sentence(detail)
    # a declared Content-Length over the limit is refused before any body byte is sent
    s = _raw(
        service.port,
        f"POST /v1/analyse HTTP/1.1\r\nHost: x\r\nContent-Length: {50 * 2**20}\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n".encode(),
    )
    assert s.recv(65536).startswith(b"HTTP/1.1 413")
    s.close()
    assert httpx.get(f"{service.url}/v1/ready").status_code == 200


def test_422_names_the_field(service, keys, images):
    _, paths = images
    img = ("a.jpg", paths[0].read_bytes())
    with client(service, keys) as c:
        cases = {
            "images": post(c, [img] * (MAX_IMAGES + 1)),
            "colour": post(c, [img], data={"colour": "red"}),
            "age": post(c, [img], data={"age": "abc"}),
            "sex": post(c, [img, img], data={"sex": ["male", "female", "male"]}),
            "heatmap": post(c, [img], params={"heatmap": "cat"}),
            "x": post(c, [img], params={"x": "1"}),
        }
        cases["images (as text)"] = c.post("/v1/analyse", data={"images": "a.jpg"})
        cases["none"] = c.post("/v1/analyse")
    for field, r in cases.items():
        assert r.status_code == 422, (field, r.text)
        detail = r.json()["detail"]
        assert one_sentence(detail), (field, detail)
        assert r.json().get("field") == ("images" if field == "none" else field.split()[0]), (field, r.text)
    assert str(MAX_IMAGES) in cases["images"].json()["detail"]


# The CLI's bad-input table (tests/test_bad_input_table.py), case by case: the request it becomes, or why
# it has no request (the service reads no local path, writes no file and chose its model at start).
API_CASES = {
    "predict-text-as-jpg": ({"images": [("text.jpg", b"not an image")]}, "images"),
    "predict-empty-file": ({"images": [("empty.jpg", b"")]}, "images"),
    "predict-truncated-jpeg": ({"images": "truncated"}, "images"),
    "predict-heic": ({"images": [("photo.heic", b"\x00\x00\x00\x18ftypheic" + bytes(64))]}, "images"),
    "predict-folder-without-images": ({"images": [("readme.txt", b"nothing here")]}, "images"),
    "predict-meta-bad-age": ({"data": {"age": "abc"}}, "age"),
    "predict-meta-bad-sex": ({"data": {"sex": "robot"}}, "sex"),
    "predict-format-bogus": ({"params": {"format": "bogus"}}, "format"),
    "predict-backend-bogus": ({"params": {"backend": "tpu"}}, "backend"),
    "unknown-option": ({"data": {"colour": "red"}}, "colour"),
    "predict-rule-unknown": ({"params": {"rule": "fastest"}}, "rule"),
}
NOT_REQUESTS = {
    "predict-missing-file": "a local path: `predict --server` gives it the local row (test_predict_server_...)",
    "predict-symlink-loop": "a local path: as above",
    "predict-meta-missing": "the CSV is read by the client, with the same sentence as a local run",
    "predict-meta-no-image-column": "the CSV is read by the client",
    "predict-model-missing": "the service's model is chosen at start: test_serve_refuses_bad_options",
    "predict-model-pickle": "as above",
    "predict-model-junk": "as above",
    "predict-model-bad-json": "as above (the same load_config check)",
    "predict-model-temperature-0": "as above (the same load_config check)",
    "predict-out-is-a-folder": "the service writes no file",
    "predict-out-under-a-file": "the service writes no file",
}


def test_every_bad_predict_input_of_the_cli_table_is_a_4xx_sentence(service, keys, images):
    predict_cases = {c[0] for c in CLI_CASES if c[0].startswith("predict-") or c[0] == "unknown-option"}
    assert predict_cases <= set(API_CASES) | set(NOT_REQUESTS), predict_cases - set(API_CASES) - set(NOT_REQUESTS)
    _, paths = images
    good = ("lesion.jpg", paths[0].read_bytes())
    with client(service, keys) as c:
        for case, (spec, field) in API_CASES.items():
            files = spec.get("images", [good])
            if files == "truncated":
                files = [("truncated.jpg", good[1][:300])]
            r = post(c, files, data=spec.get("data"), params=spec.get("params"))
            assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
            detail = r.json()["detail"]
            assert one_sentence(detail), (case, detail)
            if field == "images":
                assert files[0][0] in detail and r.json()["images"][0]["error"] == detail, case
            else:
                assert r.json()["field"] == field and field in detail, (case, detail)


def test_a_request_over_the_timeout_is_503_and_abandoned(default_model, images, tmp_path):
    """One analysis at a time: of two held requests one runs, one waits; both time out, neither is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    hold = tmp_path / "hold"
    hold.mkdir()
    _, paths = images
    data = paths[0].read_bytes()
    with running_service(tmp_path, "--timeout", "1", "--concurrency", "1", hold=hold) as s:
        with ThreadPoolExecutor(2) as ex:
            answers = list(
                ex.map(lambda n: httpx.post(f"{s.url}/v1/analyse", files={"images": (n, data)}, timeout=60), ["hold-a.jpg", "hold-b.jpg"])
            )
        for r in answers:
            assert r.status_code == 503 and "1 s" in r.json()["detail"] and one_sentence(r.json()["detail"]), r.text
        wait_for(lambda: metric(s.url, "skinlesion_analyses_abandoned_total") == 2, 30, "both analyses to be abandoned", s)
        wait_for(lambda: metric(s.url, "skinlesion_analyses_in_progress") == 0, 30, "no analysis in progress", s)
        assert metric(s.url, "skinlesion_analyses_waiting") == 0
        assert httpx.get(f"{s.url}/v1/ready").status_code == 200
        assert not list(hold.iterdir())  # nobody released them: the service gave up on them


# ---- shutting down --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(default_model, images, tmp_path, workers):
    hold = tmp_path / "hold"
    hold.mkdir()
    _, paths = images
    data = paths[0].read_bytes()
    with running_service(tmp_path, "--workers", workers, hold=hold) as s:
        # /v1/ready answered by one worker says nothing of the other: wait until every worker is ready
        wait_for(lambda: metric(s.url, "skinlesion_ready") == workers, 120, "every worker to be ready", s)
        answer = {}
        held = threading.Thread(
            target=lambda: answer.update(r=httpx.post(f"{s.url}/v1/analyse", files={"images": ("hold-a.jpg", data)}, timeout=120))
        )
        held.start()
        wait_for(lambda: metric(s.url, "skinlesion_analyses_in_progress") == 1, 60, "the request to be in flight", s)
        os.kill(s.proc.pid, signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{s.url}/v1/ready").status_code == 503, 30, "ready to turn false", s)
        assert httpx.get(f"{s.url}/v1/ready").json()["status"] == "draining"
        refused = []  # with 2 workers the other one may take a moment longer to hear of the SIGTERM

        def refuses():
            refused[:] = [httpx.post(f"{s.url}/v1/analyse", files={"images": ("b.jpg", data)})]
            return refused[0].status_code == 503

        wait_for(refuses, 30, "new analyses to be refused", s)
        assert "shutting down" in refused[0].json()["detail"] and refused[0].headers["retry-after"]
        (hold / "hold-a.jpg.go").touch()
        held.join(60)
        assert answer["r"].status_code == 200 and answer["r"].json()["images"][0]["top_class"] in CODES
        assert s.proc.wait(60) == 0, s.read_log()
        assert "Traceback" not in s.read_log()


# ---- the command line ----------------------------------------------------------------------------


def test_predict_server_writes_the_same_csv_as_a_local_predict(service, keys, images, run_cli, tmp_path, monkeypatch):
    root, paths = images
    monkeypatch.chdir(tmp_path)
    Path("notes.jpg").write_text("not an image")
    files = [str(p) for p in paths[:6]] + ["notes.jpg", "missing.jpg"]  # 8 files: two requests of at most 4
    meta = root / "HAM10000_metadata.csv"
    code, out, err = run_cli("predict", "default", *files, "--meta", meta, "--out", "local.csv")
    assert code == 0, err
    key = keys[0].parent / "cli.key"
    code, out, err = run_cli("predict", "--server", service.url, "--api-key-file", key, *files, "--meta", meta, "--out", "remote.csv")
    assert code == 0, err
    assert Path("remote.csv").read_text() == Path("local.csv").read_text()
    text = Path("remote.csv").read_text()
    assert "missing.jpg does not exist" in text and "notes.jpg is not an image" in text
    # --rule travels to the service: the same rows as a local run under that rule
    code, out, err = run_cli("predict", "default", *files[:3], "--rule", "balanced", "--out", "local_b.csv")
    assert code == 0, err
    code, out, err = run_cli(
        "predict", "--server", service.url, "--api-key-file", key, *files[:3], "--rule", "balanced", "--out", "remote_b.csv"
    )
    assert code == 0, err
    assert Path("remote_b.csv").read_text() == Path("local_b.csv").read_text()
    assert set(pd.read_csv("remote_b.csv")["decision_rule"]) == {"balanced"}


def test_predict_server_refusals_are_sentences(service, keys, images, run_cli, tmp_path):
    _, paths = images
    bad = tmp_path / "bad.key"
    bad.write_text("slk_00000000_nope\n")
    cases = [
        (["predict", "--server", service.url, paths[0]], "API key"),
        (["predict", "--server", service.url, "--api-key-file", bad, paths[0]], "not valid"),
        (["predict", "--server", service.url, "--api-key-file", tmp_path / "nope.key", paths[0]], "nope.key"),
        (["predict", "--server", service.url, "--tta", paths[0]], "--tta"),
        (["predict", "--server", service.url, "default", paths[0]], "leave out MODEL"),
        (["predict", "--server", service.url, "--api-key-file", keys[0].parent / "cli.key", "--rule", "fastest", paths[0]], "'fastest'"),
        (["predict", "default", paths[0], "--api-key-file", bad], "--server"),
        (["predict", "--server", "localhost:1", paths[0]], "not a URL"),
        (["predict", "--server", f"http://127.0.0.1:{free_port()}", paths[0]], "Could not reach"),
    ]
    for args, phrase in cases:
        code, out, err = run_cli(*args)
        assert code == 2 and phrase in err and "Traceback" not in err, (args, err)


def test_new_key_prints_a_key_and_stores_only_its_salted_hash(run_cli, tmp_path):
    from skinlesion.serve.keys import KeyRing

    path = tmp_path / "sub" / "keys.txt"
    code, out, err = run_cli("serve", "--new-key", "--api-keys", path)
    assert code == 0, err
    first = out.strip()
    code, out, err = run_cli("serve", "--new-key", "--api-keys", path)
    second = out.strip()
    assert first != second and first.startswith("slk_") and "shown only this once" in err
    text = path.read_text()
    assert first.split("_", 2)[2] not in text and second.split("_", 2)[2] not in text
    ring = KeyRing(path)
    assert ring.check(first).ok and ring.check(second).ok and not ring.check(first + "x").ok
    assert ring.check(first).key_id == first.split("_")[1]


def test_serve_refuses_bad_options_before_binding(run_cli, tmp_path, default_model):
    empty = tmp_path / "empty.txt"
    empty.write_text("# no keys yet\n")
    broken = tmp_path / "broken.txt"
    broken.write_text("abc\n")
    (tmp_path / "model.pt").write_bytes(b"\x80\x04K\x01.")
    (tmp_path / "junk.safetensors").write_text("not safetensors")
    cases = [
        (["--host", "0.0.0.0"], "loopback"),
        (["--api-keys", tmp_path / "nope.txt"], "nope.txt"),
        (["--api-keys", empty, "--host", "0.0.0.0"], "holds no key"),
        (["--api-keys", broken], "line 1"),
        (["--rate", "lots"], "--rate"),
        (["--cors", "viewer.example/path"], "--cors"),
        (["--max-mb", "0"], "--max-mb"),
        (["--port", "0"], "--port"),
        (["--new-key"], "--api-keys"),
        (["--model", tmp_path / "nope.safetensors"], "nope.safetensors"),
        (["--model", tmp_path / "model.pt"], "pickle"),
        (["--model", tmp_path / "junk.safetensors"], "junk"),
    ]
    for args, phrase in cases:
        code, out, err = run_cli("serve", *args)
        assert code == 2 and phrase in err and "Traceback" not in err, (args, out, err)


def test_rate_limit_bucket_refills_at_the_rate():
    from skinlesion.serve.limits import RateLimit

    now = [0.0]
    rl = RateLimit(2 / 60, clock=lambda: now[0])  # 2 a minute: bursts of 2
    assert rl.take("a") == 0 and rl.take("a") == 0
    wait = rl.take("a")
    assert wait == pytest.approx(30.0) and RateLimit.retry_after(wait) == "30"
    assert rl.take("b") == 0  # per key
    now[0] = 30.0
    assert rl.take("a") == 0 and rl.take("a") > 0


def test_threads_are_the_cores_over_the_analyses_at_once(monkeypatch):
    from skinlesion.serve import settings as s

    monkeypatch.setattr(s, "usable_cores", lambda: 8)
    assert (s.Settings().analyses_at_once(), s.Settings().threads()) == (8, 1)
    assert (s.Settings(workers=2).analyses_at_once(), s.Settings(workers=2).threads()) == (4, 1)
    assert s.Settings(concurrency=2).threads() == 4 and s.Settings(workers=16).threads() == 1


def test_the_workers_shared_socket_is_tcp_so_responses_are_not_held_by_nagle():
    """uvicorn binds the --workers socket with proto 0, and asyncio then leaves Nagle on (uvicorn #3149)."""
    from skinlesion.serve.runner import APP, _Config

    sock = _Config(APP, factory=True, host="127.0.0.1", port=free_port(), workers=2).bind_socket()
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.get_inheritable()
        sock.listen()
        with socket.create_connection(sock.getsockname()):
            conn, _ = sock.accept()
            with conn:
                assert conn.proto == socket.IPPROTO_TCP  # what asyncio checks before it sets TCP_NODELAY
    finally:
        sock.close()
