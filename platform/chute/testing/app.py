"""``ChuteApp``: the real API and job store on a temp SQLite and a stub broker, drained on demand."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from chute.broker import Broker
from chute.executor import InlineExecutor
from chute.jobs import Delivery, Finished
from chute.lifecycle import Claim
from chute.models import Job, JobStatus, utcnow
from chute.notify import ListTransport, Tally
from chute.runner import AttemptResult, Task
from chute.runtime import Runtime
from chute.settings import Settings
from chute.worker import task_for

WORKER = "chute-testing"


class StubPublisher:
    """Stands in for the broker: keeps what was published, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def publish(self, bodies: Sequence[bytes], queue: str | None = None,
                headers: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.messages.extend((queue or "work", b, headers or {}) for b in bodies)

    def publish_jobs(self, job_ids: Sequence[str]) -> None:
        self.publish([f'{{"job": "{j}"}}'.encode() for j in job_ids])

    def close(self) -> None:
        pass


class ChuteApp:
    """``client`` is an HTTP test client; ``drain()`` runs every queued job; ``outbox`` holds the mail."""

    def __init__(self, var_dir: Path, handlers: Path | str = "handlers", **settings: Any) -> None:
        from fastapi.testclient import TestClient

        from chute.api import create_app

        values: dict[str, Any] = {"var_dir": Path(var_dir), "database_url": f"sqlite:///{Path(var_dir) / 'chute.db'}",
                                  "broker_url": "memory://", "handlers": Path(handlers)}
        self.settings = Settings(**{**values, **settings})
        self.publisher = StubPublisher()
        self.runtime = Runtime.build(self.settings, publisher=self.publisher)  # type: ignore[arg-type]
        self.store = self.runtime.store
        self.executor = InlineExecutor(self.runtime.registry)
        self.app = create_app(self.runtime, outbox=False)
        self.client = TestClient(self.app)
        self.client.__enter__()
        #: every email the app sent, parsed (``email.message.EmailMessage``), in the order sent
        self.outbox: list[EmailMessage] = []
        self.notifier = self.runtime.notifier(lambda: ListTransport(self.outbox), describe="chute_app.outbox")

    @property
    def broker(self) -> Broker:
        return self.runtime.broker

    def drain(self, max_attempts: int = 10_000) -> int:
        """Run every pending job and every retry (without waiting for its delay), then send the emails
        their outcomes call for into ``outbox``; returns attempts run."""
        ran = 0
        while ran < max_attempts:
            with self.runtime.db.write() as session:
                session.execute(update(Job).where(Job.status == JobStatus.RETRYING)
                                .values(next_attempt_at=utcnow()))
            with self.runtime.db.read() as session:
                ids = list(session.scalars(select(Job.id).where(
                    Job.status.in_([JobStatus.PENDING, JobStatus.RETRYING])).order_by(Job.created_at)))
            if not ids:
                break
            for claimed in self.store.claim([Delivery(i) for i in ids], WORKER, 300.0):
                if claimed.decision is not Claim.RUN or claimed.job is None:
                    continue
                task = task_for(claimed.job, self.runtime.storage, self.runtime.registry, self.runtime.scratch)
                self.executor.submit(task, self._record)
                ran += 1
        self.deliver()
        return ran

    def deliver(self) -> Tally:
        """Send every pending email into ``outbox``, through the real notifier and delivery rows (any
        backoff is skipped, as ``drain`` skips retry delays). ``notifier`` can be swapped for one with
        another transport (``runtime.notifier()`` sends over CHUTE_SMTP_URL)."""
        if self.notifier.running or not self.runtime.deliveries.has_due(due_only=False):
            return Tally()  # a started notifier sends on its own
        self.notifier.templates.check()  # no templates: say so, rather than leave the mail pending
        return _run(self.notifier.run_once(due_only=False))  # one pass: each pending email tried once

    def _record(self, task: Task, result: AttemptResult) -> None:
        self.store.record([Finished(task.job_id, task.attempt, result)], WORKER, self.runtime.registry)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/jobs/{job_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def upload(self, content: bytes, filename: str, **data: Any) -> dict[str, Any]:
        response = self.client.post("/uploads", files={"file": (filename, content)}, data=data)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def close(self) -> None:
        if self.notifier.running:
            self.notifier.stop()
        self.client.__exit__(None, None, None)
        self.runtime.close()


def _run(coroutine: Coroutine[Any, Any, Tally]) -> Tally:
    """Run a coroutine to the end, also from a test that is itself inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
