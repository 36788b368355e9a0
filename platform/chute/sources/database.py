"""The database as the queue: the embedded default, no server to install.

The jobs table is the queue (as procrastinate, Oban and solid_queue do it): ``fetch`` reserves due
rows through ``JobService.reserve`` and the worker's claim starts them. A new upload in this process
wakes a waiting fetch at once, one in another process on this host rings its ``Doorbell``; other
hosts are seen by a short poll, and a fetch with nothing due
sleeps only until the next retry falls due. Dead letters are the jobs in ``failed``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime

from chute.doorbell import Doorbell
from chute.jobs import JobService
from chute.models import Job
from chute.sources import JobMessage

log = logging.getLogger("chute.sources.database")


class DatabaseSource:
    def __init__(self, jobs: JobService, wakeup: threading.Event, *, poll: float = 0.25,
                 visibility: float = 30.0, doorbell: Doorbell | None = None) -> None:
        self.jobs, self.wakeup = jobs, wakeup
        self.poll, self.visibility = poll, visibility
        #: uploads in other processes on this host ring it (the poll covers other hosts)
        self.doorbell = doorbell
        self._woken = False
        if doorbell is not None:
            doorbell.listen(wakeup.set)

    def fetch(self, limit: int, timeout: float) -> list[JobMessage]:
        if limit > 0:
            # Woken by an upload, go straight to the reservation: the read that keeps idle polls off
            # the write lock would only say what the wake-up already did.
            reserved = self.jobs.reserve(limit, self.visibility, probe=not self._woken)
            self._woken = False
            if reserved:
                return [JobMessage(job_id, False, until) for job_id, until in reserved]
            timeout = min(timeout, self._until_next_due())
        # Cleared after the wait, not before: what set it (an upload committed, an attempt's result
        # queued) is already there for the caller to see, so a set lost here costs nothing.
        if timeout > 0 and self.wakeup.wait(timeout):
            self.wakeup.clear()
            self._woken = True
        return []

    def _until_next_due(self) -> float:
        """Seconds until the next job falls due (a retry's time), at most ``poll``: another process
        may add work at any moment, and only a poll sees it."""
        due: datetime | None = self.jobs.next_due()
        if due is None:
            return self.poll
        return max(0.0, min(self.poll, (due - self.jobs.now()).total_seconds()))

    def ack(self, messages: Sequence[JobMessage]) -> None:
        """Nothing to do: the claim or outcome that came first already moved the row."""

    def requeue(self, messages: Sequence[JobMessage]) -> None:
        self.jobs.release([(m.job_id, m.handle) for m in messages])

    def dead_letter(self, message: JobMessage, reason: str, job: Job | None = None) -> None:
        if job is None:
            log.warning("event=dead-letter job=%s reason=%s", message.job_id, reason)

    def tune(self, fast: bool) -> None:
        """A reservation costs the same at any depth: the worker's ``limit`` is all it needs."""

    def wake(self) -> None:
        self.wakeup.set()

    def close(self) -> None:
        """The doorbell is the runtime's (the API's rings share it): ``Runtime.close`` closes it."""
