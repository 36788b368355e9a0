"""The Alembic migrations and the SQLAlchemy models describe one schema: a database built by the
migrations alone is the one the models expect, table by table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from chute.db import Database
from chute.models import Base


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def migrated(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A database that only the migrations have built, on SQLite and on PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'chute.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_database")
    db = Database(url)
    db.migrate()
    try:
        yield db
    finally:
        db.dispose()


def test_the_migrations_build_every_table_the_models_describe(migrated: Database) -> None:
    """Tables, columns, types, nullability, indexes, unique constraints and foreign keys; a model
    changed without its migration (or a migration without its model) is a difference listed here."""
    with migrated.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences: list[Any] = compare_metadata(context, Base.metadata)
        tables = set(context.dialect.get_table_names(conn))
    assert set(Base.metadata.tables) <= tables  # the check looked at every model's table
    assert differences == [], "models and migrations differ:\n" + "\n".join(map(repr, differences))
