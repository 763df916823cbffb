"""Alembic's environment: always run on the connection :func:`skinlesion.study.migrate.upgrade` hands over."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the study migrations through skinlesion.study.migrate.upgrade, which passes the connection")
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
