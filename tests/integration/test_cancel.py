"""Cancelling jobs against real `chute worker` processes, on both job sources (the database as the
queue, and RabbitMQ): a pending or retrying job never runs; a running one ends cancelled when its
attempt does, or at once with kill; the bulk actions count what they did."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from chute.models import utcnow

pytestmark = pytest.mark.slow


def status(chute: Any, job_id: str) -> str:
    return str(chute.job(job_id)["status"])


def outcomes(chute: Any, job_id: str) -> list[str | None]:
    return [a["outcome"] for a in chute.attempts(job_id)]


def waiting_in_rabbitmq(chute: Any) -> int:
    """Messages ready on the work queue (none when the database is the queue)."""
    broker = chute.rt.broker
    if broker is None:
        return 0
    with broker.connection() as conn:
        count: int = conn.channel().queue_declare(queue=broker.work_queue.name, passive=True).message_count
        return count


def start_worker(chute: Any, chute_proc: Any, env_for: Any) -> Any:
    return chute_proc(["worker", "--concurrency", "1"], env_for(chute.rt.settings))


def test_a_cancelled_pending_job_is_never_run_and_the_job_after_it_is(
        make_chute: Any, source: dict[str, Any], chute_proc: Any, env_for: Any, wait: Any) -> None:
    chute = make_chute(**source)
    cancelled = chute.upload("a.txt", notify="ops@example.com")
    answer = chute.client.post(f"/jobs/{cancelled}/cancel")
    assert (answer.status_code, answer.json()["status"]) == (200, "cancelled")
    start_worker(chute, chute_proc, env_for)
    after = chute.upload("b.txt")
    # On RabbitMQ the cancelled job's message is ahead of this one in the queue: the worker took it first.
    assert chute.finished(after, wait, timeout=60)["status"] == "processed"
    job = chute.job(cancelled)
    assert (job["status"], job["attempts"]) == ("cancelled", 0)
    assert outcomes(chute, cancelled) == []
    assert chute.rt.deliveries.for_job(cancelled) == []
    assert waiting_in_rabbitmq(chute) == 0, "its message was dropped, not left in the queue"


def test_a_cancelled_retrying_job_never_runs_its_retry(make_chute: Any, source: dict[str, Any], chute_proc: Any,
                                                      env_for: Any, wait: Any) -> None:
    """On RabbitMQ its retry waits in a wait queue, to come back at its time: the claim refuses it."""
    chute = make_chute(**source)
    start_worker(chute, chute_proc, env_for)
    job_id = chute.upload("a.stubborn")  # fails; its retry waits three seconds
    retrying = wait(lambda: (j := chute.job(job_id))["status"] == "retrying" and j, 60, 0.05,
                    message="the first attempt to fail")
    answer = chute.client.post(f"/jobs/{job_id}/cancel")
    assert (answer.status_code, answer.json()["status"]) == (200, "cancelled")
    due = datetime.fromisoformat(retrying["next_attempt_at"])
    # the retry's time and a margin (a relay tick, the wait queue's hand-back, a fetch): then ask again
    wait(lambda: utcnow() > due + timedelta(seconds=2), 30, message="the retry's time to pass")
    assert chute.finished(chute.upload("m.txt"), wait, timeout=30)["status"] == "processed"
    job = chute.job(job_id)
    assert (job["status"], job["attempts"]) == ("cancelled", 1)
    assert outcomes(chute, job_id) == ["error"]
    assert waiting_in_rabbitmq(chute) == 0


def test_a_cancelled_running_job_ends_cancelled_when_its_attempt_ends_with_no_retry_and_no_mail(
        make_chute: Any, source: dict[str, Any], chute_proc: Any, env_for: Any, wait: Any) -> None:
    chute = make_chute(**source)
    start_worker(chute, chute_proc, env_for)
    job_id = chute.upload("a.sulky", b"1.5", notify="ops@example.com")  # fails after 1.5 s, attempts left
    wait(lambda: status(chute, job_id) == "running", 60, 0.05, message="the job to start")
    answer = chute.client.post(f"/jobs/{job_id}/cancel")
    assert answer.status_code == 202, answer.text
    assert (answer.json()["status"], answer.json()["cancel_requested"]) == ("running", "finish")
    wait(lambda: status(chute, job_id) == "cancelled", 30, 0.05, message="the attempt to end")
    job = chute.job(job_id)
    assert job["attempts"] == 1 and job["error"]["type"] == "OSError"
    assert outcomes(chute, job_id) == ["error"], "the attempt ran to its end, and no retry followed"
    assert chute.rt.deliveries.for_job(job_id) == []


def test_kill_stops_a_long_running_handler_within_seconds_and_the_next_job_still_runs(
        make_chute: Any, source: dict[str, Any], chute_proc: Any, env_for: Any, wait: Any) -> None:
    """A 30 s lease: its renewals come every 10 s, yet the kill reaches the attempt in a few seconds."""
    chute = make_chute(lease_seconds=30.0, **source)
    start_worker(chute, chute_proc, env_for)
    job_id = chute.upload("long.slow", b"60")
    wait(lambda: status(chute, job_id) == "running", 60, 0.05, message="the job to start")
    asked = time.monotonic()
    answer = chute.client.post(f"/jobs/{job_id}/cancel", params={"kill": "true"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["cancel_requested"] == "kill"
    wait(lambda: status(chute, job_id) == "cancelled", 8, 0.05, message="the killed attempt to end")
    assert time.monotonic() - asked < 8
    job = chute.job(job_id)
    assert job["attempts"] == 1
    assert outcomes(chute, job_id) == ["cancelled"], "stopped by the operator: not a crash, not retried"
    nxt = chute.upload("b.txt")
    assert chute.finished(nxt, wait, timeout=20)["status"] == "processed", "the pool's one slot works again"


def test_bulk_cancel_and_bulk_retry_answer_how_many_and_do_it(
        make_chute: Any, source: dict[str, Any], chute_proc: Any, env_for: Any, wait: Any) -> None:
    chute = make_chute(**source)
    waiting = [chute.upload(f"p{i}.txt") for i in range(3)]  # no worker yet: they wait
    assert chute.client.get("/jobs/count", params={"status": "pending", "handler": "echo"}).json() == {"count": 3}
    answer = chute.client.post("/jobs/cancel", params={"status": "pending", "handler": "echo"})
    assert answer.json() == {"count": 3}
    start_worker(chute, chute_proc, env_for)
    doomed = [chute.upload(f"r{i}.reject") for i in range(3)]
    assert [chute.finished(j, wait, timeout=60)["status"] for j in doomed] == ["failed"] * 3
    assert chute.client.get("/jobs/count", params={"status": "failed", "handler": "rejects"}).json() == {"count": 3}
    answer = chute.client.post("/jobs/retry", params={"status": "failed", "handler": "rejects"})
    assert (answer.status_code, answer.json()) == (202, {"count": 3})
    for job_id in doomed:
        wait(lambda j=job_id: outcomes(chute, j) == ["rejected", "rejected"] and status(chute, j) == "failed", 60,
             0.05, message="the re-run to run and fail again")
    assert [(status(chute, j), chute.job(j)["attempts"]) for j in waiting] == [("cancelled", 0)] * 3
    assert waiting_in_rabbitmq(chute) == 0
