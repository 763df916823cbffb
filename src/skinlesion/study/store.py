"""The study database: four tables (studies, cases, readers, answers) in SQLAlchemy 2, migrated by Alembic on open.

``--db study.sqlite`` (a path) is an embedded SQLite file in WAL mode; ``--db postgresql://user@host/db`` is a
PostgreSQL server (driver: psycopg 3). Every write is one transaction (:meth:`Store.session`): a killed
process loses nothing that was committed, and leaves nothing half written. SQLite transactions begin
``IMMEDIATE`` so concurrent writers queue (on a lock within a process, ``busy_timeout`` across processes)
instead of failing.

Nothing secret is stored in the clear: reader tokens and the admin key are kept as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..errors import SkinLesionError

PHASES = ("solo", "assisted")
ARMS = ("solo", "assisted")
MANAGEMENT = ("excise", "follow up", "reassure")


def now() -> datetime:
    return datetime.now(timezone.utc)


def utc(t: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite hands back naive ones)."""
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(18)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    name: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(Text)
    model_hash: Mapped[str] = mapped_column(String(128), default="")
    labels: Mapped[list] = mapped_column(JSON)  # the model's class codes: the diagnoses a reader may give
    malignant: Mapped[list] = mapped_column(JSON)  # the malignant (or pre-malignant) codes among them
    arms: Mapped[list] = mapped_column(JSON)
    education: Mapped[bool] = mapped_column(Boolean, default=False)  # readers see truth and their running score
    admin_key_hash: Mapped[str] = mapped_column(String(64))
    tier_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)  # the model's "soon" malignant threshold
    model_answers: Mapped[str] = mapped_column(Text, default="")  # where the model's answers came from, in words
    seed: Mapped[int] = mapped_column(Integer, default=0)


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("study_id", "position", name="uq_cases_position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # the case number readers see (1..N); never the image id
    image_id: Mapped[str] = mapped_column(Text)
    truth: Mapped[str] = mapped_column(String(32))
    image: Mapped[bytes] = mapped_column(LargeBinary)  # PNG
    model_probs: Mapped[dict] = mapped_column(JSON)
    model_top: Mapped[str] = mapped_column(String(32))
    model_malignant: Mapped[float] = mapped_column(Float)
    model_tier: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_source: Mapped[str] = mapped_column(String(16))  # "out-of-fold" or "fresh"
    heatmap: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # PNG overlay


class Reader(Base):
    __tablename__ = "readers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(Text)
    arm: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # revision 0002: which case (and phase) was last shown, and when: the answer's time spent
    shown_case_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    shown_phase: Mapped[str | None] = mapped_column(String(16), nullable=True)
    shown_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Answer(Base):
    __tablename__ = "answers"
    __table_args__ = (UniqueConstraint("reader_id", "case_id", "phase", name="uq_answers_once"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id", ondelete="CASCADE"))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    phase: Mapped[str] = mapped_column(String(16))
    diagnosis: Mapped[str] = mapped_column(String(32))
    management: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    time_spent_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # revision 0002


def database_url(db: str | Path) -> str:
    """``--db`` as a SQLAlchemy URL: a path is a SQLite file; ``postgresql://`` uses psycopg 3."""
    text = str(db)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser()}"
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


class Store:
    """One open study database: ``with store.session() as s:`` is one transaction (committed on exit)."""

    def __init__(self, db: str | Path, *, migrate: bool = True, flag: str = "--db"):
        """``flag``: the option the database came from, as its refusals name it (``--study-db`` of app and serve)."""
        self.url = database_url(db)
        self.flag = flag
        self.shown = _shown(self.url)
        try:
            url = make_url(self.url)
        except ArgumentError:
            raise SkinLesionError(
                f"{flag} {db!r} is neither a file path nor a database URL; pass study.sqlite or postgresql://..."
            ) from None
        self.sqlite = url.get_backend_name() == "sqlite"
        if self.sqlite:
            if url.database and url.database != ":memory:":
                parent = Path(url.database).parent
                if not parent.is_dir():
                    raise SkinLesionError(f"The folder {parent} of {flag} does not exist; create it or choose another path.")
            self.engine = create_engine(self.url, connect_args={"timeout": 30})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        elif url.get_backend_name() == "postgresql":
            self.engine = create_engine(self.url, pool_size=10, max_overflow=20)
            event.listen(self.engine, "checkin", _idle_from)
            event.listen(self.engine, "checkout", _ping_if_idle)
        else:
            raise SkinLesionError(f"{flag} {self.shown} is not SQLite or PostgreSQL; pass a file path or a postgresql:// URL.")
        # SQLite takes one writer at a time: queue this process's transactions on a lock (woken at once) rather than
        # on SQLite's busy handler, which sleeps in growing steps; other processes still wait on busy_timeout
        self._one_at_a_time = threading.Lock() if self.sqlite else nullcontext()
        self._fixed: dict = {}
        self._fixed_lock = threading.Lock()
        if migrate:
            self.migrate()

    def migrate(self) -> str:
        """Bring the schema to this version's head (from empty or an older revision); refuse a newer one."""
        from .migrate import upgrade

        try:
            return upgrade(self)
        except OperationalError as exc:
            raise SkinLesionError(
                f"Cannot open the study database {self.shown} ({_reason(exc)}); check {self.flag} and that the server runs."
            ) from None

    @contextmanager
    def session(self):
        with self._one_at_a_time, Session(self.engine, expire_on_commit=False) as s:
            try:
                with s.begin():
                    yield s
            except OperationalError as exc:
                raise SkinLesionError(f"The study database {self.shown} failed ({_reason(exc)}); nothing was written, retry.") from None

    def study(self, s: Session, study_id: str) -> Study:
        study = s.get(Study, study_id)
        if study is None:
            raise SkinLesionError(f"No study {study_id!r} in {self.shown}; `skinlesion study create` prints the id of a new one.")
        return study

    def fixed(self, key, make):
        """A value that never changes once written (a study's cases, a reader's order), made once per process."""
        with self._fixed_lock:
            if key in self._fixed:
                return self._fixed[key]
        value = make()
        with self._fixed_lock:
            return self._fixed.setdefault(key, value)

    def reader(self, s: Session, token: str) -> Reader | None:
        return s.scalars(select(Reader).where(Reader.token_hash == token_hash(token))).first()

    def close(self) -> None:
        self.engine.dispose()


PING_AFTER_S = 10.0  # a pooled PostgreSQL connection idle this long is checked (SELECT 1) before it is used again


def _idle_from(dbapi_conn, record) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_conn, record, proxy) -> None:
    """SQLAlchemy's ``pool_pre_ping`` costs a round trip per transaction (measured: about a third of an
    answer's time on a busy machine); a connection in steady use is checked by its next statement instead
    (a server restart fails the transactions then in flight, which say so and ask for a retry, and the
    pool is renewed), and one that sat idle, where a restart or a firewall's timeout is likely, is pinged
    first and replaced when the ping fails."""
    since = record.info.get("idle_since")
    if since is None or time.monotonic() - since < PING_AFTER_S:
        return
    try:
        cur = dbapi_conn.cursor()
        cur.execute("SELECT 1")
        cur.close()
        dbapi_conn.rollback()
    except Exception:
        raise DisconnectionError() from None  # the pool drops it and connects anew


def _sqlite_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event emits BEGIN IMMEDIATE itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    # WAL + NORMAL: a commit is in the WAL file before it returns, so a killed process loses nothing; only a power
    # cut could lose the last commits (FULL fsyncs every commit: 3x the wall time per answer on this machine)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _reason(exc: Exception) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_store(db: str | Path) -> Store:
    return Store(db)
