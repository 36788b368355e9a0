"""The worker loop itself, run for real (``run(burst=True)``) over the in-memory queue and over the
database as the queue, with handlers in this process: faults of the database and bugs in a turn."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from chute.executor import InlineExecutor
from chute.runtime import Runtime
from chute.settings import Settings
from chute.testing import ChuteApp
from chute.worker import Worker

HANDLERS = Path(__file__).resolve().parent / "kit_handlers"


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[ChuteApp]:
    app = ChuteApp(tmp_path / "var", handlers=HANDLERS)
    try:
        yield app
    finally:
        app.close()


def failing_first(times: int, real: Any, error: BaseException) -> Any:
    calls = {"n": 0}

    def call(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return real(*args, **kwargs)

    return call


def db_error() -> OperationalError:
    return OperationalError("UPDATE jobs …", {}, Exception("database is locked"))


def test_drain_runs_the_real_worker_loop_and_jumps_the_clock_over_retry_waits(kit: ChuteApp,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[Worker] = []
    real_run = Worker.run

    def spy(self: Worker, burst: bool = False) -> None:
        runs.append(self)
        real_run(self, burst)

    monkeypatch.setattr(Worker, "run", spy)
    job = kit.upload(b"x", "slow.patient")
    assert kit.drain() == 3
    done = kit.job(job["id"])
    assert (done["status"], done["attempts"], done["result"]) == ("processed", 3, {"attempt": 3})
    assert runs and all(w.source is kit.queue for w in runs), "drain() fetched through the worker loop"
    attempts = kit.client.get(f"/jobs/{job['id']}/attempts").json()
    gaps = [(datetime.fromisoformat(b["started_at"]) - datetime.fromisoformat(a["finished_at"])).total_seconds()
            for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 600 and gaps[1] >= 1200, f"each wait honoured on the kit's clock: {gaps}"


def test_a_database_error_keeps_the_finished_attempt_and_records_it_when_the_database_answers(
        kit: ChuteApp, monkeypatch: pytest.MonkeyPatch) -> None:
    job = kit.upload(b"x", "a.txt")
    worker = kit.worker()
    real = worker.jobs.record_and_claim
    calls: list[int] = []

    def flaky(finished: Any, messages: Any, *args: Any) -> Any:
        calls.append(len(finished))
        if finished and calls.count(len(finished)) <= 2:  # the two first tries to record the outcome
            raise db_error()
        return real(finished, messages, *args)

    monkeypatch.setattr(worker.jobs, "record_and_claim", flaky)
    worker.run(burst=True)
    done = kit.job(job["id"])
    assert (done["status"], done["attempts"]) == ("processed", 1), "the outcome was kept, not run again"
    assert worker.faults["database"] == 2
    assert [c for c in calls if c] == [1, 1, 1], "the same finished attempt, written again until it held"


def test_a_bug_in_a_turn_is_logged_with_its_traceback_counted_and_the_worker_goes_on(
        kit: ChuteApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    first = kit.upload(b"x", "a.txt")
    worker = kit.worker()
    monkeypatch.setattr(worker.source, "ack", failing_first(1, worker.source.ack, RuntimeError("a bug")))
    monkeypatch.setattr(worker.stopping, "wait", lambda timeout=None: False)  # no pause after the bug
    worker.run(burst=True)
    second = kit.upload(b"y", "b.txt")
    worker = kit.worker()
    worker.run(burst=True)
    assert [kit.job(j["id"])["status"] for j in (first, second)] == ["processed", "processed"]
    bug = [r for r in caplog.records if r.name == "chute.worker" and "a turn failed" in r.getMessage()]
    assert len(bug) == 1 and bug[0].exc_info is not None and "RuntimeError: a bug" in caplog.text


def test_a_stopping_worker_commits_what_finished_before_handing_anything_back(kit: ChuteApp) -> None:
    job = kit.upload(b"x", "a.txt")
    worker = kit.worker()
    worker.stop(now=True)  # stop before the first turn: nothing fetched, nothing lost
    worker.run()
    assert kit.job(job["id"])["status"] == "pending"
    assert len(kit.queue or []) == 1, "the message is still queued for the next worker"


def database_worker(tmp_path: Path, **overrides: Any) -> tuple[Runtime, Worker]:
    settings = Settings(var_dir=tmp_path / "var", handlers=HANDLERS, **overrides)
    rt = Runtime.build(settings)
    worker = Worker(rt.jobs, rt.source(1), rt.registry, rt.storage, InlineExecutor(rt.registry), concurrency=1,
                    scratch=rt.scratch, lease=30.0, shutdown_grace=0.0, describe="test")
    return rt, worker


def test_an_upload_in_the_same_process_wakes_a_waiting_database_worker_at_once(tmp_path: Path, wait: Any) -> None:
    from fastapi.testclient import TestClient

    from chute.api import create_app

    rt, worker = database_worker(tmp_path, poll_interval=60.0)
    worker.idle_wait = 60.0  # only a wake-up can make it look sooner
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with TestClient(create_app(rt)) as client:
            assert worker.ready.wait(10)
            job = client.post("/uploads", files={"file": ("a.txt", b"x")}).json()
            wait(lambda: rt.jobs.get(job["id"]).status.value == "processed", 5, 0.01,  # far below the 60 s poll
                 message="the worker to wake for an upload in its own process")
    finally:
        worker.stop()
        thread.join(10)
        rt.close()


def test_a_result_bigger_than_a_job_may_keep_fails_the_job_with_the_reason(kit: ChuteApp) -> None:
    job = kit.upload(b"x", "a.verbose")
    kit.drain()
    done = kit.job(job["id"])
    assert (done["status"], done["attempts"], done["error"]["type"]) == ("failed", 1, "InvalidResult")
    assert "CHUTE_MAX_RESULT_BYTES" in done["error"]["message"] and done["result"] is None


def test_retention_removes_old_finished_jobs_files_and_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    from datetime import timedelta

    app = ChuteApp(tmp_path / "var", handlers=HANDLERS, retention_days=1, notify_default=["ops@example.com"])
    try:
        old = app.upload(b"x", "old.txt")
        app.drain()
        app.clock.advance_to(app.clock() + timedelta(days=1, hours=1))
        recent = app.upload(b"y", "recent.txt")
        app.drain()
        waiting = app.upload(b"z", "waiting.txt")  # not drained: pending, never removed
        old_file = app.runtime.storage.path(app.runtime.storage.key_for(old["id"]))
        assert old_file.exists() and app.client.get(f"/jobs/{old['id']}").status_code == 200
        assert app.runtime.retention is not None
        assert app.runtime.retention.sweep() == 1
        assert app.client.get(f"/jobs/{old['id']}").status_code == 404
        assert not old_file.exists(), "the old job's file went with it"
        assert [app.job(j["id"])["status"] for j in (recent, waiting)] == ["processed", "pending"]
        assert app.runtime.deliveries.for_job(old["id"]) == []
        assert len(app.runtime.deliveries.for_job(recent["id"])) == 1
    finally:
        app.close()
