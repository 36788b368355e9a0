"""PostgreSQL (the database for more than one machine), as the queue itself and beside RabbitMQ."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, inspect

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_migrations_build_the_schema_on_postgres(postgres_database: str) -> None:
    from chute.db import Database

    db = Database(postgres_database)
    db.migrate()
    db.migrate()  # a second start is a no-op
    engine = create_engine(postgres_database)
    assert {"jobs", "job_attempts", "alembic_version"} <= set(inspect(engine).get_table_names())
    engine.dispose()
    db.dispose()


def test_jobs_retry_and_finish_on_postgres_with_two_workers(make_chute: Any, postgres_database: str,
                                                            source: dict[str, Any], wait: Any) -> None:
    """On the database source the two workers share the jobs table with FOR UPDATE SKIP LOCKED."""
    chute = make_chute(database_url=postgres_database, **source)
    chute.start_worker(concurrency=2)
    chute.start_worker(concurrency=2)
    ids = [chute.upload(f"f{i}.txt", f"{i}".encode()) for i in range(20)] + [chute.upload("x.flaky")]
    jobs = [chute.finished(j, wait, timeout=60) for j in ids]
    assert [j["status"] for j in jobs] == ["processed"] * 21
    assert [j["attempts"] for j in jobs] == [1] * 20 + [3]
    page = chute.client.get("/jobs", params={"limit": 5}).json()
    assert len(page["items"]) == 5 and page["next_cursor"]
