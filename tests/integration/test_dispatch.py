"""The worker on both job sources (the database as the queue, and real RabbitMQ): retries, timeouts,
crashes, re-runs; then what only RabbitMQ has: dead-letter queues, poison messages, lost messages
and broker outages. Handlers that misbehave on purpose live in tests/integration/handlers/."""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime
from typing import Any

import pytest

from chute.retry import RetryPolicy

pytestmark = pytest.mark.slow


@pytest.fixture
def chute(make_chute: Any, source: dict[str, Any]) -> Any:
    made = make_chute(**source)
    made.start_worker(concurrency=2)
    return made


@pytest.fixture
def rabbit(make_chute: Any, amqp_url: str, queue_prefix: str) -> Any:
    made = make_chute(broker_url=amqp_url, queue_prefix=queue_prefix)
    made.start_worker(concurrency=2)
    return made


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_a_flaky_handler_is_processed_after_exactly_three_attempts(chute: Any, wait: Any) -> None:
    job = chute.finished(chute.upload("data.flaky"), wait)
    assert job["status"] == "processed"
    assert job["attempts"] == 3
    assert job["result"] == {"attempt": 3}
    assert [a["outcome"] for a in chute.attempts(job["id"])] == ["error", "error", "processed"]


def test_the_wait_between_attempts_stays_within_the_policy(chute: Any, wait: Any) -> None:
    policy = RetryPolicy(attempts=3, backoff=0.4, max_backoff=2.0)  # the flaky handler's
    job = chute.finished(chute.upload("data.flaky"), wait)
    attempts = chute.attempts(job["id"])
    for number, (before, after) in enumerate(itertools.pairwise(attempts), start=1):
        low, high = policy.delay_bounds(number)
        gap = (ts(after["started_at"]) - ts(before["finished_at"])).total_seconds()
        # Never early. Late by at most one relay tick (0.1 s here) plus a claim: the scheduler's grain.
        assert low <= gap <= high + 0.6, f"gap {gap:.3f}s after attempt {number}, policy allows {low}-{high}s"


def test_an_always_failing_handler_fails_after_exactly_three_attempts(chute: Any, wait: Any) -> None:
    job = chute.finished(chute.upload("data.broken"), wait)
    assert job["status"] == "failed"
    assert job["attempts"] == 3
    assert job["error"]["type"] == "OSError"
    assert job["error"]["message"] == "always broken (attempt 3)"
    assert "raise OSError" in job["error"]["traceback"]
    assert len(chute.attempts(job["id"])) == 3
    listed = chute.client.get("/jobs", params={"status": "failed"}).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]], "the failed jobs are the dead letters an operator sees"


@pytest.mark.rabbitmq
def test_on_rabbitmq_a_job_that_fails_for_good_is_copied_to_the_dead_letter_queue(
        rabbit: Any, wait: Any, dead_letters: Any, queue_prefix: str) -> None:
    job = rabbit.finished(rabbit.upload("data.broken"), wait)
    letters = wait(lambda: dead_letters(f"{queue_prefix}.dead"), 10, message="the dead letter")
    assert [json.loads(m.body)["job"] for m in letters] == [job["id"]]
    assert letters[0].headers["x-chute-attempts"] == 3


def test_reject_fails_after_one_attempt(chute: Any, wait: Any) -> None:
    job = chute.finished(chute.upload("data.reject"), wait)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert job["error"]["type"] == "Reject"


def test_an_error_outside_the_policy_fails_at_once(chute: Any, wait: Any) -> None:
    job = chute.finished(chute.upload("data.picky"), wait)
    assert (job["status"], job["attempts"], job["error"]["type"]) == ("failed", 1, "ValueError")


def test_a_handler_past_its_timeout_is_stopped_and_the_attempt_fails(chute: Any, wait: Any) -> None:
    started = time.monotonic()
    job = chute.finished(chute.upload("data.hang"), wait)
    assert time.monotonic() - started < 60, "the 120 s sleep was stopped, not waited out"
    assert (job["status"], job["attempts"]) == ("failed", 2)
    assert job["error"]["type"] == "HandlerTimeout"
    assert [a["outcome"] for a in chute.attempts(job["id"])] == ["timeout", "timeout"]


def test_an_async_handler_past_its_timeout_is_cancelled(chute: Any, wait: Any) -> None:
    job = chute.finished(chute.upload("data.ahang"), wait)
    assert (job["status"], job["error"]["type"]) == ("failed", "HandlerTimeout")


def test_a_handler_that_kills_its_process_is_a_failed_attempt_and_the_worker_goes_on(chute: Any, wait: Any) -> None:
    crashed = chute.finished(chute.upload("data.crash"), wait)
    assert (crashed["status"], crashed["attempts"], crashed["error"]["type"]) == ("failed", 2, "HandlerCrashed")
    fine = chute.finished(chute.upload("fine.txt"), wait)
    assert fine["status"] == "processed"


def test_a_handler_past_its_memory_limit_fails_at_once_and_the_worker_goes_on(chute: Any, wait: Any) -> None:
    hog = chute.finished(chute.upload("data.hog"), wait)
    assert (hog["status"], hog["attempts"], hog["error"]["type"]) == ("failed", 1, "MemoryLimitExceeded"), hog
    assert "256 MiB" in hog["error"]["message"]
    assert chute.finished(chute.upload("fine.txt"), wait)["status"] == "processed"


@pytest.mark.rabbitmq
def test_garbage_on_the_queue_is_dead_lettered_and_the_next_job_runs(
        rabbit: Any, wait: Any, dead_letters: Any, queue_prefix: str) -> None:
    publisher = rabbit.rt.relay.publisher
    publisher.publish([b"\x00not json at all", json.dumps({"job": "0" * 32}).encode()])
    job = rabbit.finished(rabbit.upload("after.txt"), wait)
    assert job["status"] == "processed"
    letters = wait(lambda: dead_letters(f"{queue_prefix}.dead") or None, 10, message="dead letters")
    reasons = sorted(m.headers["x-chute-reason"] for m in letters)
    assert len(letters) == 2
    assert reasons[0].startswith("no job") and reasons[1].startswith("undecodable")


def test_a_failed_job_can_be_rerun_and_a_processed_one_cannot(chute: Any, wait: Any) -> None:
    failed = chute.finished(chute.upload("data.reject"), wait)
    again = chute.client.post(f"/jobs/{failed['id']}/retry")
    assert again.status_code == 202 and again.json()["status"] == "pending"
    assert chute.finished(failed["id"], wait)["status"] == "failed"
    assert len(chute.attempts(failed["id"])) == 2
    processed = chute.finished(chute.upload("ok.txt"), wait)
    assert chute.client.post(f"/jobs/{processed['id']}/retry").status_code == 409
    assert chute.client.post("/jobs/0000000000000000000000000000beef/retry").status_code == 404


@pytest.mark.rabbitmq
def test_a_job_whose_message_was_lost_in_the_broker_is_published_again_after_the_grace(
        make_chute: Any, amqp_url: str, queue_prefix: str, wait: Any) -> None:
    from kombu.connection import Connection

    chute = make_chute(broker_url=amqp_url, queue_prefix=queue_prefix, publish_grace=2.0)
    job_id = chute.upload("lost.txt")
    with Connection(amqp_url, connect_timeout=3) as conn:  # the API published it; a purge (or a policy) drops it
        chute.rt.broker.declare(conn)
        wait(lambda: conn.default_channel.queue_declare(f"{queue_prefix}.work", passive=True).message_count == 1,
             5, message="the message to be in the queue")
        conn.default_channel.queue_purge(f"{queue_prefix}.work")
    chute.start_worker(concurrency=1)
    job = chute.finished(job_id, wait, timeout=20)
    assert (job["status"], job["attempts"]) == ("processed", 1)


@pytest.mark.rabbitmq
def test_uploads_while_the_broker_is_unreachable_are_kept_and_processed_when_it_is_back(
        make_chute: Any, amqp_url: str, queue_prefix: str, tcp_proxy: Any, wait: Any) -> None:
    proxy = tcp_proxy(("127.0.0.1", 5672))
    chute = make_chute(broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//", queue_prefix=queue_prefix)
    chute.start_worker(concurrency=2)
    assert chute.finished(chute.upload("before.txt"), wait)["status"] == "processed"

    proxy.cut()
    ids = []
    for i in range(20):
        started = time.monotonic()
        ids.append(chute.upload(f"f{i}.txt", f"{i}".encode()))
        assert time.monotonic() - started < 2.0, "an upload waited on the dead broker"
    assert all(chute.job(i)["status"] == "pending" for i in ids)

    proxy.restore()
    jobs = [chute.finished(i, wait, timeout=60) for i in ids]
    assert [j["status"] for j in jobs] == ["processed"] * 20
    assert all(j["attempts"] == 1 for j in jobs)
