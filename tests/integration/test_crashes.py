"""Workers that die or stall: SIGKILL mid-job, SIGTERM mid-job, a database locked past the lease, and
several worker processes sharing one queue, each on both job sources (the database as the queue,
and RabbitMQ). Workers here are real `chute worker` processes."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def running(chute: Any, job_id: str) -> bool:
    return chute.job(job_id)["status"] == "running"


def _kill_mid_job_then_recover(chute: Any, chute_proc: Any, env: dict[str, str], wait: Any) -> None:
    first = chute_proc(["worker", "--concurrency", "2"], env)
    slow = [chute.upload(f"s{i}.slow", b"1.5") for i in range(4)]
    quick = [chute.upload(f"q{i}.txt") for i in range(6)]
    wait(lambda: any(running(chute, j) for j in slow), 30, message="a slow job to start")
    first.kill()  # SIGKILL: no chance to hand anything back

    chute_proc(["worker", "--concurrency", "2"], env)
    jobs = [chute.finished(j, wait, timeout=90) for j in slow + quick]
    assert [j["status"] for j in jobs] == ["processed"] * 10, jobs
    killed = [j for j in jobs if j["attempts"] == 2]
    assert killed, "the job running at the kill was run again, and that run counted as an attempt"
    for job in killed:
        outcomes = [a["outcome"] for a in chute.attempts(job["id"])]
        assert outcomes == ["lost", "processed"]


def test_a_worker_killed_mid_job_loses_nothing(make_chute: Any, source: dict[str, Any], chute_proc: Any,
                                               env_for: Any, wait: Any) -> None:
    """On RabbitMQ the killed worker's messages are redelivered at once; on the database the leases of
    its jobs expire (5 s here) and the relay makes them due again."""
    chute = make_chute(lease_seconds=5.0, **source)
    _kill_mid_job_then_recover(chute, chute_proc, env_for(chute.rt.settings), wait)


def test_a_job_whose_worker_dies_and_never_comes_back_is_taken_over_when_its_lease_expires(
        make_chute: Any, chute_proc: Any, env_for: Any, wait: Any) -> None:
    """The database as the queue has no redelivery to lean on: the lease alone brings the job back."""
    chute = make_chute(lease_seconds=2.0)
    env = env_for(chute.rt.settings)
    first = chute_proc(["worker", "--concurrency", "1"], env)
    job_id = chute.upload("long.slow", b"30")
    wait(lambda: running(chute, job_id), 30, message="the job to start")
    first.kill()
    chute_proc(["worker", "--concurrency", "1"], env)
    wait(lambda: chute.job(job_id)["attempts"] == 2, 30, message="the job to be taken over")
    assert chute.attempts(job_id)[0]["outcome"] == "lost"


def test_sigterm_lets_the_running_job_finish_then_exits_cleanly(make_chute: Any, source: dict[str, Any],
                                                                chute_proc: Any, env_for: Any, wait: Any) -> None:
    chute = make_chute(**source)
    worker = chute_proc(["worker", "--concurrency", "1"], env_for(chute.rt.settings))
    job_id = chute.upload("a.slow", b"1.5")
    wait(lambda: running(chute, job_id), 30, message="the job to start")
    assert worker.stop(timeout=60) == 0
    job = chute.job(job_id)
    assert (job["status"], job["attempts"]) == ("processed", 1)
    assert "finishing in-flight jobs" in worker.output()


def test_a_second_sigterm_hands_the_running_job_back_at_once(make_chute: Any, source: dict[str, Any],
                                                             chute_proc: Any, env_for: Any, wait: Any) -> None:
    chute = make_chute(**source)
    worker = chute_proc(["worker", "--concurrency", "1"], env_for(chute.rt.settings))
    job_id = chute.upload("long.slow", b"60")
    wait(lambda: running(chute, job_id), 30, message="the job to start")
    worker.popen.send_signal(signal.SIGTERM)
    wait(lambda: "finishing in-flight jobs" in worker.output(), 10, message="the first SIGTERM to be seen")
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0, worker.output()
    job = chute.job(job_id)
    assert (job["status"], job["attempts"]) == ("pending", 0), job
    assert [a["outcome"] for a in chute.attempts(job_id)] == ["interrupted"]


def test_a_worker_stopping_past_its_grace_hands_the_job_back_uncounted(make_chute: Any, wait: Any) -> None:
    chute = make_chute()
    worker = chute.start_worker(concurrency=1, shutdown_grace=0.2)
    job_id = chute.upload("long.slow", b"30")
    wait(lambda: running(chute, job_id), 30, message="the job to start")
    chute.stop_workers()
    job = chute.job(job_id)
    assert (job["status"], job["attempts"]) == ("pending", 0), job
    assert [a["outcome"] for a in chute.attempts(job_id)] == ["interrupted"]
    assert worker.stopping.is_set()
    chute.start_worker(concurrency=1, shutdown_grace=0.2)
    wait(lambda: running(chute, job_id), 30, message="another worker to pick it up")


def test_several_worker_processes_share_one_queue(make_chute: Any, source: dict[str, Any], chute_proc: Any,
                                                  env_for: Any, wait: Any) -> None:
    chute = make_chute(**source)
    env = env_for(chute.rt.settings)
    workers = [chute_proc(["worker", "--concurrency", "1"], env) for _ in range(2)]
    ready = "consuming" if source else "fetching jobs from"
    for w in workers:
        wait(lambda w=w: ready in w.output(), 60, message="both workers to connect")
    ids = [chute.upload(f"s{i}.slow", b"0.3") for i in range(8)]
    jobs = [chute.finished(j, wait, timeout=60) for j in ids]
    assert all(j["status"] == "processed" for j in jobs)
    by_worker: dict[str, int] = {}
    for j in ids:
        for attempt in chute.attempts(j):
            by_worker[attempt["worker"]] = by_worker.get(attempt["worker"], 0) + 1
    assert len(by_worker) == 2 and min(by_worker.values()) >= 2, by_worker


def test_a_database_locked_past_the_lease_costs_the_running_job_no_attempt(
        make_chute: Any, source: dict[str, Any], chute_proc: Any, env_for: Any, wait: Any) -> None:
    """Another process holds SQLite's write lock for longer than the lease while a job runs: the
    worker's outcome and lease renewals wait for it, and the attempt counts once, its handler run once."""
    import sqlite3

    chute = make_chute(lease_seconds=2.0, **source)
    chute_proc(["worker", "--concurrency", "1"], env_for(chute.rt.settings))
    job_id = chute.upload("a.slow", b"1.0")
    wait(lambda: running(chute, job_id), 30, message="the job to start")
    database = chute.rt.settings.db_url.removeprefix("sqlite:///")
    lock = sqlite3.connect(database, isolation_level=None, timeout=30)
    lock.execute("BEGIN IMMEDIATE")  # every writer now waits: the worker, its relay, the API's relay
    locked_at = time.monotonic()
    try:  # the scenario's length, not a hope: 5 s of lock is past the 2 s lease and the 1 s job
        wait(lambda: time.monotonic() > locked_at + 5.0, 10, message="5 s of lock")
        assert chute.job(job_id)["status"] == "running", "nobody could write meanwhile"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    job = chute.finished(job_id, wait, timeout=30)
    assert (job["status"], job["attempts"]) == ("processed", 1), job
    assert [a["outcome"] for a in chute.attempts(job_id)] == ["processed"]
