"""Alembic, run programmatically: ``upgrade(store)`` brings a study database to this version's schema.

Revisions live in ``migrations/versions`` (0001: the four tables; 0002: time spent per answer, the case
shown to each reader, an index on answers by study). A database stamped with a revision this version does
not know was written by a newer skinlesion: it is refused, never migrated down or guessed at.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from ..errors import SkinLesionError

HEAD_REVISION = "0002"
MIGRATIONS = Path(__file__).with_name("migrations")


def _config(connection=None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(store) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(store, revision: str = "head") -> str:
    """Migrate to ``revision`` (default: head) in one transaction; returns the revision now stamped."""
    from alembic import command

    cfg = _config()
    script = ScriptDirectory.from_config(cfg)
    with store.engine.begin() as conn:
        if not store.sqlite:  # two processes opening one new database at once: one migrates, the other waits
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(2026026)")
        found = MigrationContext.configure(conn).get_current_revision()
        if found is not None:
            try:
                script.get_revision(found)
            except CommandError:
                raise SkinLesionError(
                    f"The study database {store.shown} has schema revision {found}, newer than this skinlesion knows "
                    f"({script.get_current_head()}); upgrade skinlesion to open it."
                ) from None
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        return MigrationContext.configure(conn).get_current_revision()
