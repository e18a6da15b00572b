"""Alembic environment: runs on the connection handed over by `db.migrate()`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from overair.server.storage.schema import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` from the command line
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    connection = engine.connect()
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
