"""/metrics: counters count events as they happen (and never go down), state is a gauge read from the
database with one cheap grouped query, and a worker process's counts reach the API's /metrics."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, text, update
from sqlalchemy.exc import OperationalError

from chute import telemetry
from chute.api.metrics import Metrics
from chute.models import Job, JobStatus, utcnow
from chute.notify import Tally
from chute.testing import ChuteApp

HANDLERS = '''\
"""Handlers for the metrics tests: one that works, one that fails once and is retried, one that refuses."""

from __future__ import annotations

from chute import Context, Reject, Upload, handler, retry


@handler("text/x-ok", extensions=[".ok"])
def ok(upload: Upload, ctx: Context) -> dict[str, object]:
    return {"attempt": ctx.attempt}


@handler("text/x-flaky", extensions=[".flaky"])
@retry(attempts=3, backoff=1.0, on=(OSError,))
def flaky(upload: Upload, ctx: Context) -> dict[str, object]:
    if ctx.attempt == 1:
        raise OSError("the first attempt fails on purpose")
    return {"attempt": ctx.attempt}


@handler("text/x-broken", extensions=[".broken"])
def broken(upload: Upload, ctx: Context) -> dict[str, object]:
    raise Reject("this file can never be read")
'''

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def handlers_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "handlers"
    folder.mkdir()
    (folder / "kinds.py").write_text(HANDLERS)
    return folder


@pytest.fixture
def kit(tmp_path: Path, handlers_dir: Path) -> Iterator[ChuteApp]:
    app = ChuteApp(tmp_path / "var", handlers=handlers_dir, retention_days=1)
    try:
        yield app
    finally:
        app.close()


def parse(body: str) -> Samples:
    """Every sample of a Prometheus text exposition, by (sample name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def scrape(kit: ChuteApp) -> Samples:
    response = kit.client.get("/metrics")
    assert response.status_code == 200
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_jobs_attempts_retries_and_uploads_are_counted_when_they_happen(kit: ChuteApp) -> None:
    for name in ("a.ok", "b.flaky", "c.broken"):
        kit.upload(b"x", name)
    kit.client.post("/uploads", files={"file": ("blob.bin", bytes(range(256)))})
    kit.drain()
    m = scrape(kit)
    finished = {(h, s): value(m, "chute_jobs_finished_total", handler=h, status=s)
                for h, s in (("ok", "processed"), ("flaky", "processed"), ("broken", "failed"))}
    assert finished == {("ok", "processed"): 1, ("flaky", "processed"): 1, ("broken", "failed"): 1}
    assert value(m, "chute_attempts_started_total", handler="flaky") == 2
    assert value(m, "chute_attempts_total", handler="flaky", outcome="error") == 1
    assert value(m, "chute_attempts_total", handler="flaky", outcome="processed") == 1
    assert value(m, "chute_attempts_total", handler="broken", outcome="rejected") == 1
    assert value(m, "chute_retries_scheduled_total", handler="flaky") == 1
    assert value(m, "chute_retries_scheduled_total", handler="ok") is None, "nothing retried, nothing counted"
    assert value(m, "chute_uploads_total", code="202") == 3
    assert value(m, "chute_uploads_total", code="415") == 1
    assert value(m, "chute_upload_bytes_total") == 3


def test_a_finished_counter_does_not_go_down_when_its_job_is_re_run_or_deleted_by_retention(kit: ChuteApp) -> None:
    failed = kit.upload(b"x", "c.broken")
    done = kit.upload(b"x", "a.ok")
    kit.drain()
    assert value(scrape(kit), "chute_jobs_finished_total", handler="broken", status="failed") == 1

    assert kit.client.post(f"/jobs/{failed['id']}/retry").status_code == 202  # failed → pending again
    assert value(scrape(kit), "chute_jobs_finished_total", handler="broken", status="failed") == 1
    kit.drain()
    assert value(scrape(kit), "chute_jobs_finished_total", handler="broken", status="failed") == 2

    kit.clock.advance_to(utcnow() + timedelta(days=2))
    assert kit.runtime.retention is not None and kit.runtime.retention.sweep() == 2
    assert kit.client.get(f"/jobs/{done['id']}").status_code == 404, "retention deleted the rows"
    after = scrape(kit)
    assert value(after, "chute_jobs_finished_total", handler="broken", status="failed") == 2
    assert value(after, "chute_jobs_finished_total", handler="ok", status="processed") == 1
    assert value(after, "chute_attempts_total", handler="broken", outcome="rejected") == 2


def test_a_job_whose_worker_died_on_its_last_attempt_counts_a_lost_attempt_and_a_failed_job(kit: ChuteApp) -> None:
    job = kit.upload(b"x", "a.ok")
    with kit.runtime.db.write() as session:  # its last attempt's worker died: the lease ran out long ago
        session.execute(update(Job).where(Job.id == job["id"]).values(
            status=JobStatus.RUNNING, attempts=3, max_attempts=3, lease_owner="gone:1:dead",
            lease_expires_at=utcnow() - timedelta(minutes=5), dispatch_at=utcnow()))
    kit.drain()
    assert kit.job(job["id"])["status"] == "failed"
    m = scrape(kit)
    assert value(m, "chute_attempts_total", handler="ok", outcome="lost") == 1
    assert value(m, "chute_jobs_finished_total", handler="ok", status="failed") == 1
    assert value(m, "chute_attempts_started_total", handler="ok") is None, "nothing was run again"


def test_the_handler_duration_histogram_has_a_series_per_handler(kit: ChuteApp) -> None:
    kit.upload(b"x", "a.ok")
    kit.upload(b"x", "b.ok")
    kit.upload(b"x", "c.broken")
    kit.drain()
    m = scrape(kit)
    assert value(m, "chute_handler_duration_seconds_count", handler="ok") == 2
    assert value(m, "chute_handler_duration_seconds_count", handler="broken") == 1
    assert value(m, "chute_handler_duration_seconds_bucket", handler="ok", le="+Inf") == 2
    series = [labels for name, labels in m if name.startswith("chute_handler_duration_seconds")]
    assert series and all(dict(labels).get("handler") in {"ok", "broken"} for labels in series)


def test_notification_sends_are_counted_by_outcome(kit: ChuteApp) -> None:
    kit.upload(b"x", "a.ok", notify="me@example.com")
    kit.drain()
    assert len(kit.outbox) == 1
    assert value(scrape(kit), "chute_notifications_total", outcome="sent") == 1


def test_every_outcome_of_a_notifier_pass_has_its_counter() -> None:
    meter = telemetry.Telemetry()
    meter.notified(Tally(claimed=15, sent=1, retry=2, failed=3, uncertain=4, released=5, unreachable="refused"))
    meter.notified(Tally(claimed=2, released=2))  # handed back by a stopping notifier: no send was tried
    m = parse(meter.exposition())
    assert {o: value(m, "chute_notifications_total", outcome=o)
            for o in ("sent", "retry", "failed", "uncertain", "unreachable")} == {
        "sent": 1, "retry": 2, "failed": 3, "uncertain": 4, "unreachable": 5}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def statements(kit: ChuteApp) -> Iterator[list[str]]:
    """Every SQL statement the kit's database runs that counts jobs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "count(" in statement.lower() and "jobs" in statement:
            seen.append(statement)

    engine = kit.runtime.db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_queue_depth_is_one_grouped_query_over_an_index_cached_for_a_few_seconds(
        kit: ChuteApp, statements: list[str]) -> None:
    clock = FakeClock()
    kit.app.state.metrics = Metrics(kit.jobs, depth_ttl=5.0, clock=clock)
    kit.upload(b"x", "a.ok")
    kit.upload(b"x", "b.ok")
    m = scrape(kit)
    depth = {s: value(m, "chute_queue_depth", status=s) for s in ("pending", "running", "retrying")}
    assert depth == {"pending": 2, "running": 0, "retrying": 0}
    assert value(m, "chute_queue_depth", status="processed") is None, "ended jobs are counters, not a gauge"
    assert len(statements) == 1 and "GROUP BY" in statements[0]

    kit.drain()
    assert value(scrape(kit), "chute_queue_depth", status="pending") == 2, "within the cache's few seconds"
    assert len(statements) == 1, "a scrape inside the cache window runs no query"
    clock.now += 6
    assert value(scrape(kit), "chute_queue_depth", status="pending") == 0
    assert len(statements) == 2

    with kit.runtime.db.engine.connect() as conn:
        sql = statements[0].replace("?", "'pending'")
        plan = " ".join(str(row[-1]) for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    assert "SEARCH jobs USING COVERING INDEX" in plan, f"a range of one index, not a scan of the table: {plan}"


def test_a_database_that_does_not_answer_leaves_the_counters_scrapeable(
        kit: ChuteApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    kit.upload(b"x", "a.ok")
    kit.drain()

    def down() -> Any:
        raise OperationalError("SELECT …", {}, Exception("database is locked"))

    kit.app.state.metrics = Metrics(kit.jobs)
    monkeypatch.setattr(kit.jobs.db, "read", down)
    with caplog.at_level(logging.WARNING, "chute.metrics"):
        m = scrape(kit)
    assert value(m, "chute_jobs_finished_total", handler="ok", status="processed") == 1
    assert not any(name == "chute_queue_depth" for name, _ in m)
    assert "queue depth" in caplog.text


# --- a real `chute api` and a real `chute worker`, sharing PROMETHEUS_MULTIPROC_DIR ----------------------
def chute(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "chute.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_a_worker_process_counts_reach_the_api_processes_metrics(
        tmp_path: Path, handlers_dir: Path, port: int, wait: Callable[..., Any]) -> None:
    shared = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUTE_", "PROMETHEUS_"))}
    env.update(CHUTE_VAR_DIR=str(tmp_path / "var"), CHUTE_HANDLERS=str(handlers_dir),
               PROMETHEUS_MULTIPROC_DIR=str(shared), CHUTE_POLL_INTERVAL="0.05")
    api = chute(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait(lambda: _answers(url + "/healthz"), 30, message="chute api to answer")
        worker = chute(["worker", "--concurrency", "1"], env, tmp_path / "worker.log")
        with httpx.Client(base_url=url, timeout=10) as client:
            ids = [client.post("/uploads", files={"file": (name, b"x")}).json()["id"] for name in ("a.ok", "b.broken")]
            wait(lambda: all(client.get(f"/jobs/{i}").json()["status"] in ("processed", "failed") for i in ids), 60,
                 message="the worker to finish both jobs")

            def counted() -> Samples | None:
                m = parse(client.get("/metrics").text)
                return m if value(m, "chute_jobs_finished_total", handler="broken", status="failed") == 1 else None

            m = wait(counted, 10, message="the worker's counts at the API's /metrics")
            assert value(m, "chute_jobs_finished_total", handler="ok", status="processed") == 1
            assert value(m, "chute_handler_duration_seconds_count", handler="ok") == 1
            assert value(m, "chute_attempts_total", handler="broken", outcome="rejected") == 1
            assert value(m, "chute_uploads_total", code="202") == 2, "the API's own counts are there too"
            assert value(m, "chute_queue_depth", status="pending") == 0

            pids = {int(p) for p in re.findall(r"-(\d+)\.db$", "\n".join(f.name for f in shared.iterdir()), re.M)}
            assert worker.pid in pids and pids <= {api.pid, worker.pid}, (
                f"only the API and the worker write metrics, not the handlers' child processes: {pids}")

            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
            gone = parse(client.get("/metrics").text)
            assert value(gone, "chute_jobs_finished_total", handler="ok", status="processed") == 1, (
                "a stopped worker's counts stay: a counter does not go down when its process ends")
    finally:
        for process in (worker, api):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
    for log_file in ("api.log", "worker.log"):
        assert "Traceback" not in (tmp_path / log_file).read_text(), textwrap.shorten(
            (tmp_path / log_file).read_text(), 2000)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
