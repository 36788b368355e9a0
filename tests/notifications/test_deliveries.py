"""The delivery rows: made with the job's outcome, claimed by one notifier, recovered after a crash."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from chute.models import Delivery, DeliveryStatus, utcnow
from chute.notify.deliveries import DELIVERIES, Outcome
from chute.testing import ChuteApp

S = DeliveryStatus


def rows(app: ChuteApp, job_id: str | None = None) -> list[Delivery]:
    from sqlalchemy import select

    with app.runtime.db.read() as session:
        query = select(Delivery).order_by(Delivery.id)
        if job_id:
            query = query.where(Delivery.job_id == job_id)
        return list(session.scalars(query))


def test_a_processed_job_makes_one_row_per_recipient_from_upload_handler_and_defaults(
        make_app: Callable[..., ChuteApp], attempt: Callable[..., str]) -> None:
    app = make_app(notify_default=["ops@example.com", "Ann@example.com"])
    job = app.upload(b"hello", "hello.txt", notify="ann@example.com, TEAM@example.com")
    assert attempt(app, job["id"]) == "processed"
    made = rows(app, job["id"])
    assert [r.recipient for r in made] == ["ann@example.com", "TEAM@example.com", "ops@example.com"]
    assert {(r.event, r.status, r.run, r.attempts) for r in made} == {("processed", S.PENDING, 1, 0)}
    assert len({r.message_id for r in made}) == 3


def test_the_row_commits_with_the_outcome_and_snapshots_the_job(make_app: Callable[..., ChuteApp],
                                                                attempt: Callable[..., str]) -> None:
    app = make_app()
    job = app.upload(b"hello", "hello.txt", notify="ann@example.com")
    attempt(app, job["id"])
    (row,) = [r for r in rows(app, job["id"]) if r.recipient == "ann@example.com"]
    snap = row.context["job"]
    assert snap["filename"] == "hello.txt" and snap["status"] == "processed" and snap["attempts"] == 1
    assert snap["url"] == f"https://chute.example.com/jobs/{job['id']}"
    assert snap["sha256"] == job["sha256"] and snap["size"] == 5
    assert snap["result"] == {"ok": True}


def test_an_intermediate_retry_makes_no_row_and_the_final_failure_one(make_app: Callable[..., ChuteApp],
                                                                      attempt: Callable[..., str]) -> None:
    app = make_app()
    job = app.upload(b"a,b\n1,2\n", "sums.csv", notify="ann@example.com")
    assert attempt(app, job["id"], ok=False) == "retrying"
    assert rows(app) == []
    assert attempt(app, job["id"], ok=False) == "retrying"
    assert rows(app) == []
    assert attempt(app, job["id"], ok=False) == "failed"
    (row,) = rows(app)
    assert (row.event, row.recipient, row.status) == ("failed", "ann@example.com", S.PENDING)
    assert row.context["job"]["error"]["message"] == "attempt 3 failed"


def test_a_job_with_no_one_to_tell_makes_no_row(make_app: Callable[..., ChuteApp],
                                                attempt: Callable[..., str]) -> None:
    app = make_app()
    job = app.upload(b"a,b\n1,2\n", "sums.csv")
    attempt(app, job["id"], ok=False)
    attempt(app, job["id"], ok=False)
    assert attempt(app, job["id"], ok=False) == "failed"
    assert rows(app) == []


def test_a_rerun_that_ends_again_is_a_new_email_not_a_duplicate(make_app: Callable[..., ChuteApp],
                                                                attempt: Callable[..., str]) -> None:
    app = make_app()
    job = app.upload(b"a,b\n1,2\n", "sums.csv", notify="ann@example.com")
    for _ in range(3):
        attempt(app, job["id"], ok=False)
    app.jobs.retry_failed(job["id"])
    for _ in range(3):
        attempt(app, job["id"], ok=False)
    first, second = rows(app)
    assert (first.run, second.run) == (1, 2)
    assert first.message_id != second.message_id


def pending(app: ChuteApp, count: int, attempt: Callable[..., str]) -> list[int]:
    job = app.upload(b"hello", "hello.txt", notify=",".join(f"r{i}@example.com" for i in range(count - 1)))
    attempt(app, job["id"])
    return [r.id for r in rows(app, job["id"])]


def test_two_notifiers_never_claim_the_same_row(make_app: Callable[..., ChuteApp], attempt: Callable[..., str],
                                                claim_concurrently: Callable[..., dict[str, list[int]]]) -> None:
    app = make_app(notify_default=[f"d{i}@example.com" for i in range(30)])  # an upload names at most 10
    ids = pending(app, 10, attempt)
    assert len(ids) == 40
    got = claim_concurrently(app.runtime.deliveries, 4, 3)
    claimed = [i for mine in got.values() for i in mine]
    assert sorted(claimed) == sorted(ids)  # every row once, none twice


def expire(app: ChuteApp) -> None:
    with app.runtime.db.write() as session:
        session.execute(update(DELIVERIES).where(DELIVERIES.c.status == S.SENDING)
                        .values(claim_until=utcnow() - timedelta(seconds=1)))


def test_after_a_crash_a_row_that_never_reached_data_is_sent_again(make_app: Callable[..., ChuteApp],
                                                                   attempt: Callable[..., str]) -> None:
    app = make_app()
    (row_id,) = pending(app, 1, attempt)
    store = app.runtime.deliveries
    store.claim("dead-notifier", 10)
    expire(app)
    assert store.recover() == (1, 0)
    row = store.get(row_id)
    assert row is not None and row.status is S.PENDING and row.attempts == 1 and row.claimed_by is None


def test_after_a_crash_a_row_that_reached_data_is_uncertain_not_resent(make_app: Callable[..., ChuteApp],
                                                                       attempt: Callable[..., str]) -> None:
    app = make_app()
    (row_id,) = pending(app, 1, attempt)
    store = app.runtime.deliveries
    store.claim("dead-notifier", 10)
    with store.recorder("dead-notifier") as recorder:  # "DATA started", as the notifier commits it
        assert recorder.mark(row_id)
    expire(app)
    assert store.recover() == (0, 1)
    row = store.get(row_id)
    assert row is not None and row.status is S.UNCERTAIN and "may have the mail" in (row.last_error or "")
    assert store.claim("another-notifier", 10) == []


def test_a_live_claim_is_never_recovered(make_app: Callable[..., ChuteApp], attempt: Callable[..., str]) -> None:
    app = make_app()
    pending(app, 2, attempt)
    store = app.runtime.deliveries
    store.claim("busy-notifier", 10)
    assert store.recover() == (0, 0)
    assert {r.status for r in rows(app)} == {S.SENDING}


def test_a_notifier_whose_claim_was_taken_back_may_not_send(make_app: Callable[..., ChuteApp],
                                                            attempt: Callable[..., str]) -> None:
    app = make_app()
    (row_id,) = pending(app, 1, attempt)
    store = app.runtime.deliveries
    store.claim("slow-notifier", 10)
    expire(app)
    store.recover()
    store.claim("fresh-notifier", 10)
    with store.recorder("slow-notifier") as slow, store.recorder("fresh-notifier") as fresh:
        assert not slow.mark(row_id)
        assert fresh.mark(row_id)
    row = store.get(row_id)
    assert row is not None and row.claimed_by == "fresh-notifier" and row.status is S.SENDING


def test_a_released_row_gets_its_attempt_back(make_app: Callable[..., ChuteApp], attempt: Callable[..., str]) -> None:
    app = make_app()
    (row_id,) = pending(app, 1, attempt)
    store = app.runtime.deliveries
    store.claim("n", 10)
    store.release("n", [row_id], "the mail server is unreachable: refused")
    row = store.get(row_id)
    assert row is not None and (row.status, row.attempts) == (S.PENDING, 0)
    assert row.last_error == "the mail server is unreachable: refused"


def test_a_temporary_failure_waits_with_backoff(make_app: Callable[..., ChuteApp], attempt: Callable[..., str]) -> None:
    app = make_app(notify_backoff=60.0)
    (row_id,) = pending(app, 1, attempt)
    store = app.runtime.deliveries
    (claimed,) = store.claim("n", 10)
    before = utcnow()
    store.record("n", [Outcome(row_id, "retry", "451 try later", claimed.attempts)])
    after = utcnow()
    row = store.get(row_id)
    assert row is not None and row.status is S.PENDING and row.last_error == "451 try later"
    # at least the configured backoff; jitter adds at most a quarter
    assert row.next_attempt_at is not None
    assert before + timedelta(seconds=60) <= row.next_attempt_at <= after + timedelta(seconds=75)
    assert store.claim("n", 10) == []


def test_the_last_allowed_temporary_failure_is_final(make_app: Callable[..., ChuteApp],
                                                     attempt: Callable[..., str]) -> None:
    app = make_app(notify_attempts=2)
    (row_id,) = pending(app, 1, attempt)
    store = app.runtime.deliveries
    for _ in range(2):
        (claimed,) = store.claim("n", 10, due_only=False)
        store.record("n", [Outcome(row_id, "retry", "451 try later", claimed.attempts)])
    row = store.get(row_id)
    assert row is not None and row.status is S.FAILED and "gave up after 2 attempts" in (row.last_error or "")


def test_an_operator_can_requeue_an_uncertain_email(make_app: Callable[..., ChuteApp],
                                                    attempt: Callable[..., str]) -> None:
    app = make_app()
    (row_id,) = pending(app, 1, attempt)
    store = app.runtime.deliveries
    store.claim("n", 10)
    store.record("n", [Outcome(row_id, "uncertain", "timed out after DATA", 1)])
    assert store.requeue([row_id]) == 1
    row = store.get(row_id)
    assert row is not None and row.status is S.PENDING
    assert [c.message_id for c in store.claim("n", 10)] == [row.message_id]


def test_a_handlers_bad_notify_address_stops_chute_at_start(tmp_path: Any, handlers_dir: Any) -> None:
    from chute.errors import ConfigError
    from chute.runtime import Runtime
    from chute.settings import Settings

    (handlers_dir / "bad.py").write_text(
        "from chute import handler\n\n@handler('image/png', notify=['not-an-address'])\ndef png(u, c):\n    return 1\n")
    with pytest.raises(ConfigError, match=r"@handler 'png' notify=.*not-an-address"):
        Runtime.build(Settings(var_dir=tmp_path / "v", handlers=handlers_dir))


def test_a_notifier_that_is_still_sending_renews_its_claim(make_app: Callable[..., ChuteApp],
                                                           attempt: Callable[..., str]) -> None:
    app = make_app(notify_lease=60.0)
    first, second = pending(app, 2, attempt)
    store = app.runtime.deliveries
    store.claim("busy", 10)
    expire(app)
    with store.recorder("busy") as recorder:
        assert recorder.mark(first, renew=True)
    assert store.recover() == (0, 0)  # both claims were renewed, the unmarked one too
    renewed = store.get(second)
    assert renewed is not None and renewed.claim_until is not None
    assert renewed.claim_until > utcnow() + timedelta(seconds=50)


def test_the_recorder_writes_what_the_orm_reads_back(make_app: Callable[..., ChuteApp],
                                                     attempt: Callable[..., str]) -> None:
    """The per-message commits bypass the ORM: their values must still be the ORM's own (UTC times,
    status names)."""
    app = make_app(notify_backoff=60.0)
    ids = pending(app, 3, attempt)
    store = app.runtime.deliveries
    store.claim("n", 10)
    before = utcnow()
    with store.recorder("n") as recorder:
        assert recorder.mark(ids[0])
        recorder.record([Outcome(ids[0], "sent", "250 OK", 1), Outcome(ids[1], "retry", "451 later", 1),
                         Outcome(ids[2], "uncertain", "no answer", 1)])
    after = utcnow()
    sent, later, unsure = (store.get(i) for i in ids)
    assert sent is not None and later is not None and unsure is not None
    assert sent.status is S.SENT and sent.sent_at is not None and before <= sent.sent_at <= after
    assert sent.data_at is not None and before <= sent.data_at <= sent.sent_at and sent.claimed_by is None
    assert later.status is S.PENDING and later.next_attempt_at is not None and later.data_at is None
    assert before + timedelta(seconds=60) <= later.next_attempt_at <= after + timedelta(seconds=75)
    assert unsure.status is S.UNCERTAIN and unsure.last_error == "no answer"
