"""Delivery rows on PostgreSQL, where several notifiers on several machines share one table."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chute.models import DeliveryStatus
from chute.testing import ChuteApp

pytestmark = pytest.mark.postgres


def test_notifiers_on_postgres_skip_each_others_rows_and_send_each_once(
        make_app: Callable[..., ChuteApp], postgres_database: str, attempt: Callable[..., str],
        claim_concurrently: Callable[..., dict[str, list[int]]]) -> None:
    app = make_app(database_url=postgres_database,  # an upload names at most 10: the rest are defaults
                   notify_default=[f"d{i}@example.com" for i in range(20)])
    job = app.upload(b"hello\n", "hello.txt", notify=",".join(f"r{i}@example.com" for i in range(9)))
    attempt(app, job["id"])  # the hook runs in PostgreSQL's terminal transaction too
    rows = app.runtime.deliveries.for_job(job["id"])
    assert len(rows) == 30

    store = app.runtime.deliveries
    got = claim_concurrently(store, 4, 2)
    claimed = sorted(i for mine in got.values() for i in mine)
    assert claimed == sorted(r.id for r in rows)

    for owner, ids in got.items():  # each notifier releases what it holds; the kit's notifier sends it all
        store.release(owner, ids)
    app.drain()
    assert len(app.outbox) == 30 and len({m["Message-ID"] for m in app.outbox}) == 30
    assert {r.status for r in store.for_job(job["id"])} == {DeliveryStatus.SENT}
