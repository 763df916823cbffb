"""The client behind ``skinlesion predict --server URL``: the same rows as a local run, analysed by the service.

Files go in requests of at most the service's ``max_images`` and about its ``max_mb`` (read from
``GET /v1/model``), each file named by its path as given, so the rows (and their error sentences)
are the ones a local ``predict`` writes. A file the client cannot read itself (missing, a folder,
too large) gets the intake's own sentence without being sent. 429 and 503 answers are retried after
their ``Retry-After``, a few times; any other refusal ends the run with the service's sentence.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import SkinLesionError
from ..intake import MAX_FILE_BYTES, open_image
from ..predict import error_row as _error_row
from ..predict import row_columns

RETRIES = 5


def read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise SkinLesionError(
            f"The API key file {path} cannot be read ({exc.strerror or exc}); pass the file `skinlesion serve --new-key` printed into."
        ) from None
    if not key or len(key.split()) != 1:
        raise SkinLesionError(f"{path} should hold one API key (one line, as `skinlesion serve --new-key` prints it).")
    return key


class Remote:
    def __init__(self, url: str, key: str | None = None, *, timeout: float = 300.0):
        import httpx

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SkinLesionError(f"--server {url!r} is not a URL; write it as http://HOST:PORT (where `skinlesion serve` listens).")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.httpx = httpx

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kw):
        """The response to a request, retried on 429/503; refusals become one sentence."""
        for attempt in range(RETRIES + 1):
            try:
                r = self.http.request(method, path, **kw)
            except self.httpx.TransportError as exc:
                raise SkinLesionError(
                    f"Could not reach the service at {self.url} ({exc}); start it with `skinlesion serve` or check --server."
                ) from None
            if r.status_code in (429, 503) and attempt < RETRIES:
                time.sleep(min(60.0, float(r.headers.get("Retry-After", "1") or 1)))
                continue
            return r
        return r

    @staticmethod
    def sentence(r) -> str:
        try:
            return str(r.json()["detail"])
        except Exception:
            return f"HTTP {r.status_code}"

    def model(self) -> dict:
        r = self.call("GET", "/v1/model")
        if r.status_code != 200:
            raise SkinLesionError(f"The service at {self.url} refused (HTTP {r.status_code}): {self.sentence(r)}")
        return r.json()

    def analyse(self, batch: list[tuple[str, bytes]], meta: list[dict] | None, rule: str | None = None) -> list[dict]:
        files = [("images", (name, data, "application/octet-stream")) for name, data in batch]
        data = {}
        if meta is not None:
            from ..posthoc import META_FIELDS

            data = {f: ["" if _missing(m.get(f)) else str(m.get(f)) for m in meta] for f in META_FIELDS}
        r = self.call("POST", "/v1/analyse", files=files, data=data, params={"rule": rule} if rule else None)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code == 200 or (r.status_code == 422 and "images" in body):
            rows = body["images"]
            if len(rows) != len(batch):
                raise SkinLesionError(
                    f"The service at {self.url} answered {len(rows)} rows for {len(batch)} images; is it a skinlesion service?"
                )
            return rows
        raise SkinLesionError(f"The service at {self.url} refused the images (HTTP {r.status_code}): {self.sentence(r)}")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def predict_remote(
    url: str, paths, *, key_file: Path | None = None, meta: dict | None = None, progress=None, warn=None, rule: str | None = None
) -> tuple[list[dict], tuple[str, ...]]:
    """(one row per file, in order, as :func:`skinlesion.predict.predict_files` makes them, from the service at ``url``;
    the classes of the service's model). ``rule``: the decision rule (default: the service model's own)."""
    remote = Remote(url, read_key(key_file))
    try:
        info = remote.model()
        codes = tuple(c["code"] for c in info["classes"])
        columns = row_columns(codes)

        def error_row(name: str, message: str) -> dict:
            return _error_row(name, message, codes)

        limits = info.get("service", {})
        if meta is not None and warn and not info.get("input", {}).get("patient_data", {}).get("used", True):
            warn("the service's model does not use patient data; --meta is ignored.")
        max_images = int(limits.get("max_images", 16))
        budget = int(float(limits.get("max_mb", 20)) * 2**20 * 0.9)  # room for the multipart framing
        rows: list[dict | None] = [None] * len(paths)
        batch, where, size = [], [], 0

        def send():
            nonlocal batch, where, size
            if batch:
                m = [(meta or {}).get(Path(n).stem, {}) for n, _ in batch] if meta is not None else None
                for i, (name, _), row in zip(where, batch, remote.analyse(batch, m, rule)):
                    rows[i] = {c: row.get(c) for c in columns} | {"image": name}
                batch, where, size = [], [], 0
                if progress:
                    progress(sum(r is not None for r in rows))

        for i, path in enumerate(paths):
            name = str(path)
            p = Path(path)
            try:
                if not p.is_file() or p.stat().st_size > MAX_FILE_BYTES:
                    open_image(p, name)  # raises the intake's sentence (missing, folder, link loop, too large)
                data = p.read_bytes()
            except SkinLesionError as exc:
                rows[i] = error_row(name, str(exc))
                continue
            except OSError as exc:
                rows[i] = error_row(name, f"{name} cannot be read ({exc.strerror or exc}); check its permissions.")
                continue
            if len(data) > budget:
                rows[i] = error_row(
                    name,
                    f"{name} is {len(data) / 2**20:.1f} MiB, over what the service accepts per request; resize it or analyse it locally.",
                )
                continue
            if batch and (len(batch) >= max_images or size + len(data) > budget):
                send()
            batch.append((name, data)), where.append(i)
            size += len(data)
        send()
        return rows, codes
    finally:
        remote.close()
