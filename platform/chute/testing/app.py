"""``ChuteApp``: the real API, job service and worker loop on a temp SQLite and an in-memory queue,
drained on demand."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from chute.executor import InlineExecutor
from chute.models import utcnow
from chute.notify import ListTransport, Tally
from chute.runtime import Runtime
from chute.settings import Settings
from chute.sources.memory import MemoryQueue
from chute.worker import Worker


class KitClock:
    """The time the kit's job service sees: real time, moved on by ``drain()`` past each retry's wait."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance_to(self, when: datetime) -> None:
        ahead = when - self()
        if ahead > timedelta(0):
            self.offset += ahead


class ChuteApp:
    """``client`` is an HTTP test client; ``drain()`` runs every queued job; ``outbox`` holds the mail."""

    def __init__(self, var_dir: Path, handlers: Path | str = "handlers", **settings: Any) -> None:
        from fastapi.testclient import TestClient

        from chute.api import create_app

        values: dict[str, Any] = {"var_dir": Path(var_dir), "database_url": f"sqlite:///{Path(var_dir) / 'chute.db'}",
                                  "broker_url": "memory://", "handlers": Path(handlers)}
        self.settings = Settings(**{**values, **settings})
        self.clock = KitClock()
        self.runtime = Runtime.build(self.settings, clock=self.clock)
        self.jobs = self.runtime.jobs
        #: the in-memory queue the relay publishes into and ``drain()``'s worker fetches from
        self.queue: MemoryQueue | None = self.runtime.memory
        self.executor = InlineExecutor(self.runtime.registry)
        self.app = create_app(self.runtime, relay=False)
        self.client = TestClient(self.app)
        self.client.__enter__()
        #: what ``upload()`` and ``job()`` send: the first of CHUTE_API_KEYS when keys are on (``client``
        #: itself sends none, so a test can still see a 401)
        self.headers = {"Authorization": f"Bearer {self.settings.api_keys[0]}"} if self.settings.api_keys else {}
        #: every email the app sent, parsed (``email.message.EmailMessage``), in the order sent
        self.outbox: list[EmailMessage] = []
        self.notifier = self.runtime.notifier(lambda: ListTransport(self.outbox), describe="chute_app.outbox")

    def worker(self) -> Worker:
        """The worker ``drain()`` runs: the real loop, on the in-memory queue, handlers in this process."""
        if self.queue is None:
            raise RuntimeError("drain() runs on the in-memory queue: leave broker_url as memory://")
        return Worker(self.jobs, self.queue, self.runtime.registry, self.runtime.storage, self.executor,
                      concurrency=1, scratch=self.runtime.scratch, lease=self.settings.lease_seconds,
                      shutdown_grace=0.0, describe="chute_app's in-memory queue", fences=self.runtime.fences)

    def drain(self, max_attempts: int = 10_000) -> int:
        """Run every queued job and every retry (the kit's clock jumps to each one's time instead of
        waiting for it), then send the emails their outcomes call for into ``outbox``; returns the
        attempts run."""
        ran = 0
        while ran < max_attempts:
            self.runtime.relay.sweep_once()  # publishes whatever is due by the kit's clock
            worker = self.worker()
            worker.run(burst=True)
            ran += worker.started
            due = self.jobs.next_due()
            if due is None or (worker.started == 0 and due <= self.clock()):
                break
            self.clock.advance_to(due)
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

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/jobs/{job_id}", headers=self.headers)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def upload(self, content: bytes, filename: str, **data: Any) -> dict[str, Any]:
        response = self.client.post("/uploads", files={"file": (filename, content)}, data=data,
                                    headers=self.headers)
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
