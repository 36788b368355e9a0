"""Workers that die: SIGKILL mid-job on RabbitMQ and on the embedded broker, SIGTERM mid-job, and
several worker processes sharing one queue. Workers here are real `chute worker` processes."""

from __future__ import annotations

import signal
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


@pytest.mark.rabbitmq
def test_a_worker_killed_mid_job_on_rabbitmq_loses_nothing(make_chute: Any, amqp_url: str, queue_prefix: str,
                                                           chute_proc: Any, env_for: Any, wait: Any) -> None:
    chute = make_chute(broker_url=amqp_url, queue_prefix=queue_prefix, lease_seconds=30.0)
    _kill_mid_job_then_recover(chute, chute_proc, env_for(chute.rt.settings), wait)


def test_a_worker_killed_mid_job_on_the_embedded_broker_loses_nothing(make_chute: Any, chute_proc: Any,
                                                                      env_for: Any, wait: Any) -> None:
    chute = make_chute(lease_seconds=30.0)
    _kill_mid_job_then_recover(chute, chute_proc, env_for(chute.rt.settings), wait)


def test_a_job_whose_worker_dies_and_never_comes_back_is_taken_over_when_its_lease_expires(
        make_chute: Any, chute_proc: Any, env_for: Any, wait: Any) -> None:
    """No redelivery to lean on (the embedded broker's message is held by the dead process until a
    worker sweeps it): the lease alone brings the job back."""
    chute = make_chute(lease_seconds=2.0)
    env = env_for(chute.rt.settings)
    first = chute_proc(["worker", "--concurrency", "1"], env)
    job_id = chute.upload("long.slow", b"30")
    wait(lambda: running(chute, job_id), 30, message="the job to start")
    first.kill()
    chute_proc(["worker", "--concurrency", "1"], env)
    wait(lambda: chute.job(job_id)["attempts"] == 2, 30, message="the job to be taken over")
    assert chute.attempts(job_id)[0]["outcome"] == "lost"


@pytest.mark.rabbitmq
def test_sigterm_lets_the_running_job_finish_then_exits_cleanly(make_chute: Any, amqp_url: str, queue_prefix: str,
                                                                chute_proc: Any, env_for: Any, wait: Any) -> None:
    chute = make_chute(broker_url=amqp_url, queue_prefix=queue_prefix)
    worker = chute_proc(["worker", "--concurrency", "1"], env_for(chute.rt.settings))
    job_id = chute.upload("a.slow", b"1.5")
    wait(lambda: running(chute, job_id), 30, message="the job to start")
    assert worker.stop(timeout=60) == 0
    job = chute.job(job_id)
    assert (job["status"], job["attempts"]) == ("processed", 1)
    assert "finishing in-flight jobs" in worker.output()


def test_a_second_sigterm_hands_the_running_job_back_at_once(make_chute: Any, chute_proc: Any, env_for: Any,
                                                             wait: Any) -> None:
    chute = make_chute()
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


@pytest.mark.rabbitmq
def test_several_worker_processes_share_one_queue(make_chute: Any, amqp_url: str, queue_prefix: str,
                                                  chute_proc: Any, env_for: Any, wait: Any) -> None:
    chute = make_chute(broker_url=amqp_url, queue_prefix=queue_prefix)
    env = env_for(chute.rt.settings)
    workers = [chute_proc(["worker", "--concurrency", "1"], env) for _ in range(2)]
    for w in workers:
        wait(lambda w=w: "consuming" in w.output(), 60, message="both workers to connect")
    ids = [chute.upload(f"s{i}.slow", b"0.3") for i in range(8)]
    jobs = [chute.finished(j, wait, timeout=60) for j in ids]
    assert all(j["status"] == "processed" for j in jobs)
    by_worker: dict[str, int] = {}
    for j in ids:
        for attempt in chute.attempts(j):
            by_worker[attempt["worker"]] = by_worker.get(attempt["worker"], 0) + 1
    assert len(by_worker) == 2 and min(by_worker.values()) >= 2, by_worker
