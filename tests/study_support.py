"""Reader-study test support: a throwaway PostgreSQL server, synthetic studies with known answers, a served study.

``pg_server`` (session): a real PostgreSQL cluster (Debian's ``postgresql`` package: initdb + pg_ctl) in a temp
folder on a free loopback port, run as the ``postgres`` user when the tests run as root; skipped, saying why,
where it cannot start. ``pg_url``: a fresh database on it per test.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from .conftest import free_port


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


class PostgresCluster:
    """``with PostgresCluster() as url:`` a started server (``postgresql://skin@127.0.0.1:PORT/postgres``), stopped on exit."""

    def __enter__(self) -> str:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl are not installed (apt-get install postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="skinlesion-pg-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no postgres user to run the server as") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        data = self.dir / "data"
        run = lambda *cmd: subprocess.run([*self.prefix, *cmd], capture_output=True, text=True, timeout=120)
        r = run(initdb, "-D", str(data), "-A", "trust", "-U", "skin", "--no-sync", "-E", "UTF8")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {(r.stderr or r.stdout).strip()[-300:]}")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        r = run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "60", "start")
        if r.returncode:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {(r.stderr or r.stdout).strip()[-300:]} {log[-300:]}")
        self.pg_ctl, self.data, self.run = pg_ctl, data, run
        return f"postgresql://skin@127.0.0.1:{self.port}/postgres"

    def __exit__(self, *exc):
        self.run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


@pytest.fixture(scope="session")
def pg_server():
    try:
        cluster = PostgresCluster()
        url = cluster.__enter__()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no PostgreSQL server could be started for the study store tests: {exc}")
    yield url
    cluster.__exit__(None, None, None)


def new_database(server_url: str) -> str:
    import psycopg

    name = "t_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server_url.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def pg_url(pg_server):
    return new_database(pg_server)


# ---- synthetic studies -------------------------------------------------------------------

CODES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MALIGNANT = ["akiec", "bcc", "mel"]


def tiny_png(shade: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade % 256, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_study(store, truths: list[str], model_tops: list[str], model_mal: list[float], *, arms=("solo",), education=False, seed=0):
    """A study of ``len(truths)`` cases with known truth and model answers; returns (study id, admin key)."""
    from skinlesion.study.create import CaseSpec, add_study

    specs = [
        CaseSpec(
            image_id=f"IMG_{k:04d}",
            truth=t,
            image=tiny_png(k),
            probs={c: (0.9 if c == m else 0.1 / 6) for c in CODES},
            top=m,
            malignant=p,
            tier="see a dermatologist soon" if p >= 0.5 else "routine",
            source="fresh",
            heatmap=tiny_png(255 - k),
        )
        for k, (t, m, p) in enumerate(zip(truths, model_tops, model_mal))
    ]
    return add_study(
        store,
        specs,
        labels=CODES,
        malignant_codes=MALIGNANT,
        model="synthetic",
        arms=arms,
        education=education,
        tier_threshold=0.5,
        seed=seed,
    )
