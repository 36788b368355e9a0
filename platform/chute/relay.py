"""The relay: what makes a job reach a worker when no one hands it over directly.

The job row is committed first (a transactional outbox); then ``send`` hands it on at once: on
RabbitMQ a background thread publishes it (batched, with confirms), on the database source it wakes
this process's waiting worker. Every ``interval`` the same thread makes due the running jobs whose
lease expired and, on RabbitMQ, publishes every job whose ``dispatch_at`` has come: uploads accepted
while the broker was down, retries whose time has come, those expired leases, and jobs published
long enough ago without starting that their message may be lost."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from chute.errors import BrokerUnavailable
from chute.jobs import Due, JobService

log = logging.getLogger("chute.relay")
BATCH = 500
LINGER = 0.003


class JobPublisher(Protocol):
    def publish_jobs(self, job_ids: Iterable[str]) -> None: ...
    def close(self) -> None: ...


class Relay:
    """``publisher`` is None on the database source (the row is the message); ``threaded=False``
    publishes in the caller's thread (the testing kit, whose in-memory queue cannot fail)."""

    def __init__(self, jobs: JobService, publisher: JobPublisher | None, *, interval: float = 0.5,
                 grace: float = 5.0, wakeup: threading.Event | None = None, threaded: bool = True,
                 housekeeping: Callable[[], object] | None = None, housekeeping_every: float = 60.0,
                 ring: Callable[[], None] | None = None) -> None:
        self.jobs, self.publisher = jobs, publisher
        #: on the database source, wakes the workers of other processes on this host (``Doorbell``)
        self.ring = ring
        self.interval, self.grace = interval, grace
        self.wakeup = wakeup
        self.threaded = threaded
        #: run every ``housekeeping_every`` seconds from the relay's thread (retention)
        self.housekeeping, self.housekeeping_every = housekeeping, housekeeping_every
        self._queue: queue.SimpleQueue[Due] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_until = 0.0
        self._down_for = 0.5

    def send(self, due: Sequence[Due]) -> None:
        """Hand freshly committed jobs on; never blocks the caller on a broker."""
        if self.publisher is None:
            if self.wakeup is not None:
                self.wakeup.set()
            if self.ring is not None:
                self.ring()
        elif not self.threaded:
            self.publisher.publish_jobs([job_id for job_id, _ in due])
        else:
            for item in due:
                self._queue.put(item)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chute-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.publisher is not None:
            self.publisher.close()

    def _run(self) -> None:
        next_sweep = next_housekeeping = time.monotonic()
        while not self._stop.is_set():
            fresh = self._take(timeout=max(0.0, min(self.interval, next_sweep - time.monotonic())))
            try:
                if fresh and time.monotonic() >= self._down_until:
                    self._publish(fresh)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.interval
                    self.sweep_once()
                if self.housekeeping is not None and time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + self.housekeeping_every
                    self.housekeeping()
            except BrokerUnavailable as exc:
                self._broker_down(exc)
            except Exception:
                log.exception("the relay pass failed; the next one retries")
                self._stop.wait(self.interval)

    def sweep_once(self) -> int:
        """Make expired leases due, then publish every due job (RabbitMQ); returns how many went out."""
        expired = self.jobs.expire_leases()
        if self.publisher is None:
            if expired and self.wakeup is not None:
                self.wakeup.set()
            return 0
        if time.monotonic() < self._down_until:
            return 0
        total = 0
        while True:
            due = self.jobs.due(BATCH)
            if not due:
                return total
            self._publish(due)
            self.jobs.mark_published(due, self.grace)
            total += len(due)
            if len(due) < BATCH:
                return total

    def _publish(self, due: list[Due]) -> None:
        """A fresh upload needs no mark: its ``dispatch_at`` (now + grace) is already its re-check time."""
        assert self.publisher is not None
        self.publisher.publish_jobs([job_id for job_id, _ in due])
        if self._down_until:
            log.info("the broker is back; the relay is publishing again")
            self._down_until, self._down_for = 0.0, 0.5

    def _broker_down(self, exc: BrokerUnavailable) -> None:
        if not self._down_until:
            log.warning("the broker is unreachable (%s); uploads are kept and will be published when it is "
                        "back", exc)
        self._down_until = time.monotonic() + self._down_for
        self._down_for = min(self._down_for * 2, 10.0)

    def _take(self, timeout: float) -> list[Due]:
        """The next batch: after the first item, linger a few milliseconds so that a burst of uploads
        goes out in one publish (one confirm round trip) instead of one each."""
        items: list[Due] = []
        try:
            items.append(self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait())
            until = time.monotonic() + LINGER
            while len(items) < BATCH:
                left = until - time.monotonic()
                items.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
        except queue.Empty:
            pass
        return items
