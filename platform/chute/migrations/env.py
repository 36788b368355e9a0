"""Alembic runs with the engine Chute hands it; PostgreSQL migrations hold an advisory lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from chute.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(727274)"))
        context.run_migrations()
