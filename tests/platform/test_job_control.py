"""Job control through the HTTP API on the testing kit (the real worker loop, drained), on SQLite and
on PostgreSQL: cancel in every state, bulk re-runs and cancels, the filters they share; then the
worker's side of a cancel (the claim and hand-back rules, the heartbeat that reports a cancel, the
process pool that stops an attempt)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from chute import jobs as jobs_module
from chute.executor import ProcessExecutor
from chute.lifecycle import CancelRequest, Claim
from chute.registry import load_handlers
from chute.runner import Task
from chute.sources import JobMessage
from chute.status import AttemptResult, Outcome
from chute.testing import ChuteApp

HANDLERS = Path(__file__).resolve().parent / "kit_handlers"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChuteApp]:
    """The kit on SQLite, and on PostgreSQL (its row locks and collation are not SQLite's)."""
    extra = {"database_url": request.getfixturevalue("postgres_database")} if request.param == "postgresql" else {}
    app = ChuteApp(tmp_path / "var", handlers=HANDLERS, **extra)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def during(kit: ChuteApp) -> Iterator[list[Callable[[str], None]]]:
    """What the ``watched`` handler calls while its attempt runs (the kit runs it in this process)."""
    spec = kit.runtime.registry.get("watched")
    assert spec is not None
    calls: list[Callable[[str], None]] = spec.func.__globals__["DURING"]
    yield calls
    calls.clear()


def cancel(kit: ChuteApp, job_id: str, **params: Any) -> httpx.Response:
    return kit.client.post(f"/jobs/{job_id}/cancel", params=params)


def attempts(kit: ChuteApp, job_id: str) -> list[str | None]:
    return [a["outcome"] for a in kit.client.get(f"/jobs/{job_id}/attempts").json()]


def statuses(kit: ChuteApp, ids: list[str]) -> list[str]:
    return [kit.job(job_id)["status"] for job_id in ids]


# --- cancel one job -----------------------------------------------------------------------------
def test_a_pending_job_is_cancelled_at_once_never_runs_and_mails_nobody(kit: ChuteApp) -> None:
    job = kit.upload(b"x", "a.txt", notify="ops@example.com")
    assert "cancel" in job["links"]
    assert kit.queue is not None and len(kit.queue) == 1, "its message is already queued"
    answer = cancel(kit, job["id"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["status"], body["cancel_requested"]) == ("cancelled", None)
    assert body["finished_at"] is not None and "cancel" not in body["links"]
    assert kit.drain() == 0, "the worker fetched its message and dropped it without running it"
    assert len(kit.queue) == 0
    assert (kit.job(job["id"])["status"], kit.job(job["id"])["attempts"]) == ("cancelled", 0)
    assert attempts(kit, job["id"]) == []
    assert kit.outbox == []


def test_kill_on_a_pending_job_cancels_it_at_once_too(kit: ChuteApp) -> None:
    job = kit.upload(b"x", "a.txt")
    answer = cancel(kit, job["id"], kill="true")
    assert (answer.status_code, answer.json()["status"]) == (200, "cancelled")
    assert kit.drain() == 0


def test_a_retrying_job_is_cancelled_at_once_and_its_retry_never_runs(kit: ChuteApp) -> None:
    job = kit.upload(b"x", "a.patient")  # fails twice; each retry waits ten minutes
    kit.drain(max_attempts=1)
    assert kit.job(job["id"])["status"] == "retrying"
    answer = cancel(kit, job["id"])
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["next_attempt_at"]) == ("cancelled", None)
    assert kit.drain() == 0, "drain jumps the clock past the retry's time: still nothing runs"
    assert attempts(kit, job["id"]) == ["error"]


def test_a_running_job_is_marked_with_202_and_ends_cancelled_when_its_attempt_ends(
        kit: ChuteApp, during: list[Callable[[str], None]]) -> None:
    answers: list[httpx.Response] = []
    during.append(lambda job_id: answers.append(cancel(kit, job_id)))
    job = kit.upload(b"ok", "a.watched", notify="ops@example.com")
    kit.drain()
    (answer,) = answers
    assert answer.status_code == 202, answer.text
    marked = answer.json()
    assert (marked["status"], marked["cancel_requested"]) == ("running", "finish")
    done = kit.job(job["id"])
    assert (done["status"], done["attempts"], done["cancel_requested"]) == ("cancelled", 1, "finish")
    assert done["finished_at"] is not None
    assert done["result"] == {"attempt": 1}, "what the attempt returned is kept"
    assert attempts(kit, job["id"]) == ["processed"]
    assert kit.outbox == [], "a cancelled job mails nobody, even when its attempt succeeded"


def test_a_marked_job_whose_attempt_fails_with_attempts_left_is_cancelled_not_retried(
        kit: ChuteApp, during: list[Callable[[str], None]]) -> None:
    during.append(lambda job_id: cancel(kit, job_id).raise_for_status())
    job = kit.upload(b"fail", "a.watched", notify="ops@example.com")
    kit.drain()
    done = kit.job(job["id"])
    assert (done["status"], done["attempts"]) == ("cancelled", 1)
    assert done["error"]["type"] == "OSError"
    assert attempts(kit, job["id"]) == ["error"]
    assert kit.outbox == []


def test_kill_marks_a_running_job_and_a_later_plain_cancel_does_not_downgrade_it(
        kit: ChuteApp, during: list[Callable[[str], None]]) -> None:
    answers: list[httpx.Response] = []
    during.append(lambda job_id: answers.extend([cancel(kit, job_id), cancel(kit, job_id, kill="true"),
                                                 cancel(kit, job_id)]))
    job = kit.upload(b"ok", "a.watched")
    kit.drain()
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a.json()["cancel_requested"] for a in answers] == ["finish", "kill", "kill"]
    assert kit.job(job["id"])["status"] == "cancelled"


@pytest.mark.parametrize(("filename", "status"), [("a.txt", "processed"), ("a.doomed", "failed"),
                                                  ("again.txt", "cancelled")])
def test_a_finished_job_is_409_with_the_reason(kit: ChuteApp, filename: str, status: str) -> None:
    job = kit.upload(b"x", filename)
    if status == "cancelled":
        cancel(kit, job["id"]).raise_for_status()
    kit.drain()
    assert kit.job(job["id"])["status"] == status
    answer = cancel(kit, job["id"], kill="true")
    assert answer.status_code == 409
    assert status in answer.json()["detail"]
    assert kit.job(job["id"])["status"] == status


def test_cancelling_an_unknown_job_is_404(kit: ChuteApp) -> None:
    answer = cancel(kit, "0000000000000000000000000000dead")
    assert answer.status_code == 404
    assert answer.json()["detail"] == "no job 0000000000000000000000000000dead"


# --- many at once -------------------------------------------------------------------------------
def test_bulk_retry_reruns_every_failed_job_of_the_handler_and_answers_how_many(kit: ChuteApp) -> None:
    doomed = [kit.upload(b"x", f"d{i}.doomed")["id"] for i in range(3)]
    other = kit.upload(b"fail", "w.watched")["id"]  # fails after its three attempts
    fine = kit.upload(b"x", "a.txt")["id"]
    kit.drain()
    assert statuses(kit, [*doomed, other, fine]) == ["failed"] * 4 + ["processed"]
    count = kit.client.get("/jobs/count", params={"status": "failed", "handler": "doomed"})
    assert count.json() == {"count": 3}
    answer = kit.client.post("/jobs/retry", params={"status": "failed", "handler": "doomed"})
    assert (answer.status_code, answer.json()) == (202, {"count": 3})
    assert statuses(kit, doomed) == ["pending"] * 3
    assert [kit.job(j)["attempts"] for j in doomed] == [0, 0, 0], "attempts start again from zero"
    assert statuses(kit, [other, fine]) == ["failed", "processed"]
    kit.drain()
    assert [attempts(kit, j) for j in doomed] == [["rejected", "rejected"]] * 3, "each ran once more"
    everything = kit.client.post("/jobs/retry", params={"status": "failed"})
    assert everything.json() == {"count": 4}


def test_bulk_retry_only_takes_failed_jobs(kit: ChuteApp) -> None:
    assert kit.client.post("/jobs/retry", params={"status": "pending"}).status_code == 422


def test_bulk_cancel_cancels_every_pending_or_retrying_job_matching_and_nothing_else(kit: ChuteApp) -> None:
    done = kit.upload(b"x", "done.txt")["id"]
    retrying = kit.upload(b"x", "a.patient")["id"]
    kit.drain(max_attempts=2)
    assert statuses(kit, [done, retrying]) == ["processed", "retrying"]
    echo = [kit.upload(b"x", f"e{i}.txt")["id"] for i in range(2)]
    nap = kit.upload(b"x", "n.nap")["id"]

    def bulk(**params: str) -> Any:
        answer = kit.client.post("/jobs/cancel", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert kit.client.get("/jobs/count", params={"status": "pending", "handler": "echo"}).json() == {"count": 2}
    assert bulk(status="pending", handler="echo") == {"count": 2}
    assert statuses(kit, [*echo, nap, retrying]) == ["cancelled", "cancelled", "pending", "retrying"]
    assert bulk(status="retrying") == {"count": 1}
    assert bulk() == {"count": 1}, "no status: pending and retrying ones"
    assert statuses(kit, [nap, retrying, done]) == ["cancelled", "cancelled", "processed"]
    assert kit.drain() == 0
    assert kit.client.post("/jobs/cancel", params={"status": "failed"}).status_code == 422


def test_bulk_actions_go_in_bounded_batches_one_transaction_each(kit: ChuteApp,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Not one transaction holding SQLite's write lock for the whole table."""
    ids = [kit.upload(b"x", f"a{i}.txt")["id"] for i in range(5)]
    monkeypatch.setattr(jobs_module, "BULK_BATCH", 2)
    real = kit.jobs.db.write
    writes: list[bool] = []

    def counted(durable: bool = True) -> Any:
        writes.append(durable)
        return real(durable)

    monkeypatch.setattr(kit.jobs.db, "write", counted)
    assert kit.client.post("/jobs/cancel", params={"status": "pending"}).json() == {"count": 5}
    assert len(writes) == 3, "batches of 2, 2 and 1"
    assert statuses(kit, ids) == ["cancelled"] * 5


# --- the filters the page's search and the CLI use ------------------------------------------------
def test_q_finds_jobs_by_file_name_or_sha256_prefix_in_the_list_the_count_and_bulk_actions(kit: ChuteApp) -> None:
    invoice = kit.upload(b"alpha", "Invoice-2024.txt")["id"]
    notes = kit.upload(b"beta", "notes.txt")["id"]

    def listed(**params: str) -> list[str]:
        return [j["id"] for j in kit.client.get("/jobs", params=params).json()["items"]]

    assert listed(q="invoice") == [invoice], "a part of the name, in any case"
    assert listed(q=hashlib.sha256(b"beta").hexdigest()[:10]) == [notes]
    assert listed(q="100%_") == [], "LIKE's wildcards are plain characters"
    assert kit.client.get("/jobs/count", params={"q": "INVOICE"}).json() == {"count": 1}
    assert kit.client.post("/jobs/cancel", params={"status": "pending", "q": "invoice"}).json() == {"count": 1}
    assert statuses(kit, [invoice, notes]) == ["cancelled", "pending"]


def test_a_job_is_found_by_the_start_or_the_end_of_its_id(kit: ChuteApp) -> None:
    ids = [kit.upload(b"x", f"a{i}.txt")["id"] for i in range(3)]

    def listed(**params: str) -> list[str]:
        answer = kit.client.get("/jobs", params=params)
        assert answer.status_code == 200, answer.text
        return sorted(j["id"] for j in answer.json()["items"])

    assert listed(id_prefix=ids[0][:-1]) == [ids[0]]
    shared = ids[0][:next((i for i, chars in enumerate(zip(*ids, strict=True)) if len(set(chars)) > 1), 32)]
    assert listed(id_prefix=shared) == sorted(ids), "uploads of one moment share the start of their ids"
    assert listed(id_suffix=ids[1][-8:]) == [ids[1]]
    assert listed(id_prefix=ids[2].upper()) == [ids[2]], "ids are hex: any case"
    assert kit.client.get("/jobs", params={"id_prefix": "zz"}).status_code == 422


# --- the worker's side --------------------------------------------------------------------------
def test_the_heartbeat_reports_the_cancel_requests_of_the_workers_running_jobs(kit: ChuteApp) -> None:
    plain, marked = kit.upload(b"x", "a.txt")["id"], kit.upload(b"x", "b.txt")["id"]
    _, claimed = kit.jobs.record_and_claim([], [JobMessage(plain), JobMessage(marked)], "w1",
                                           kit.runtime.registry, 30.0)
    assert [c.job.status.value for c in claimed if c.job] == ["running", "running"]
    assert kit.jobs.heartbeat([plain, marked], "w1", 30.0) == {}
    assert cancel(kit, marked, kill="true").status_code == 202
    assert kit.jobs.heartbeat([plain, marked], "w1", 30.0) == {marked: CancelRequest.KILL}
    assert kit.jobs.heartbeat([plain, marked], "w2", 30.0) == {}, "only the owner's leases, only its jobs"


def test_a_marked_job_whose_worker_died_is_cancelled_by_the_next_claim_not_run_again(kit: ChuteApp) -> None:
    job_id = kit.upload(b"x", "a.txt", notify="ops@example.com")["id"]
    kit.jobs.record_and_claim([], [JobMessage(job_id)], "w1", kit.runtime.registry, 30.0)
    assert cancel(kit, job_id).status_code == 202
    kit.clock.advance_to(kit.clock() + timedelta(seconds=31))  # w1 never renewed its lease: it died
    _, (claimed,) = kit.jobs.record_and_claim([], [JobMessage(job_id, redelivered=True)], "w2",
                                              kit.runtime.registry, 30.0)
    assert claimed.decision is Claim.CANCEL
    job = kit.job(job_id)
    assert (job["status"], job["attempts"]) == ("cancelled", 1)
    assert attempts(kit, job_id) == ["lost"]
    kit.deliver()
    assert kit.outbox == []


def test_a_marked_job_handed_back_by_a_stopping_worker_is_cancelled_not_queued_again(kit: ChuteApp) -> None:
    job_id = kit.upload(b"x", "a.txt")["id"]
    kit.jobs.record_and_claim([], [JobMessage(job_id)], "w1", kit.runtime.registry, 30.0)
    assert cancel(kit, job_id).status_code == 202
    kit.jobs.hand_back([(job_id, 1)], "w1")
    job = kit.job(job_id)
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert kit.drain() == 0


def stall_task(tmp_path: Path, job_id: str, handler: str = "stall") -> Task:
    original = tmp_path / job_id
    original.write_bytes(b"x")
    return Task(job_id=job_id, handler=handler, attempt=1, path=str(original), filename="a.stall",
                content_type="text/x-stall", size=1, sha256="", artifacts_dir=str(tmp_path / f"{job_id}-artifacts"),
                scratch_root=str(tmp_path / "scratch"), timeout=120)


def test_a_killed_attempt_ends_cancelled_at_once_not_crashed_and_the_pool_keeps_working(tmp_path: Path) -> None:
    executor = ProcessExecutor(1, HANDLERS, load_handlers(HANDLERS))
    results: dict[str, AttemptResult] = {}
    arrived = threading.Condition()

    def done(task: Task, result: AttemptResult) -> None:
        with arrived:
            results[task.job_id] = result
            arrived.notify_all()

    try:
        executor.submit(stall_task(tmp_path, "long"), done)
        started = time.monotonic()
        assert executor.kill("nothing-here") is False
        deadline = started + 30
        while not executor.running("long") and time.monotonic() < deadline:  # the child has it
            time.sleep(0.02)
        assert executor.kill("long") is True
        with arrived:
            assert arrived.wait_for(lambda: "long" in results, 10)
        killed = results["long"]
        assert killed.outcome is Outcome.CANCELLED and not killed.covered
        assert (killed.error or {}).get("type") == "JobCancelled"
        executor.submit(stall_task(tmp_path, "next", handler="echo"), done)
        with arrived:
            assert arrived.wait_for(lambda: "next" in results, 30), "the pool's one slot is free again"
        assert results["next"].outcome is Outcome.PROCESSED
        assert time.monotonic() - started < 40, "the stalled handler did not hold its slot for its minute"
    finally:
        executor.close(wait=False)
