"""In memory, for the testing kit: the relay publishes into it, the worker loop fetches from it.

A list in one process, like dramatiq's ``StubBroker``: nothing survives the process, and a fetch never
waits (``chute_app.drain()`` runs the worker until the queue is empty)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from chute.models import Job
from chute.sources import JobMessage


class MemoryQueue:
    """Both sides: ``publish_jobs`` (what the relay calls) and the ``JobSource`` port."""

    def __init__(self) -> None:
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()
        #: (job id, reason) of every message dead-lettered, oldest first
        self.dead: list[tuple[str, str]] = []
        self.published = 0

    # the publisher's side
    def publish_jobs(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._queue.append(job_id)
                self.published += 1

    def publish(self, bodies: Sequence[bytes], queue: str | None = None, headers: dict[str, Any] | None = None) -> None:
        raise NotImplementedError("the in-memory queue carries job ids only")

    def __len__(self) -> int:
        return len(self._queue)

    # the source's side
    def fetch(self, limit: int, timeout: float) -> list[JobMessage]:
        with self._lock:
            taken = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
        return [JobMessage(job_id) for job_id in taken]

    def ack(self, messages: Sequence[JobMessage]) -> None:
        pass

    def requeue(self, messages: Sequence[JobMessage]) -> None:
        with self._lock:
            self._queue.extendleft(m.job_id for m in reversed(messages))

    def dead_letter(self, message: JobMessage, reason: str, job: Job | None = None) -> None:
        self.dead.append((message.job_id, reason))

    def tune(self, fast: bool) -> None:
        pass

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass
