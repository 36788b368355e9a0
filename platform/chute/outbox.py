"""The transactional outbox: a job row is committed first, then its message is published.

The API hands fresh job ids to ``Outbox.send`` right after commit (no polling delay on the normal
path). The same thread sweeps the table for what did not go out: uploads accepted while the broker
was down, retries that are due, and running jobs whose worker stopped renewing its lease."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

from chute.broker import Publisher
from chute.errors import BrokerUnavailable
from chute.jobs import Due, JobStore

log = logging.getLogger("chute.outbox")
BATCH = 500
MARK_EVERY = 1.0
LINGER = 0.003


class Outbox:
    def __init__(self, store: JobStore, publisher: Publisher, *, interval: float = 0.5, lease: float = 30.0,
                 sweep: bool = True) -> None:
        self.store, self.publisher = store, publisher
        self.interval, self.lease, self.sweep = interval, lease, sweep
        self._queue: queue.SimpleQueue[Due] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_until = 0.0
        self._down_for = 0.5
        self._unmarked: list[Due] = []
        self._marked_at = time.monotonic()

    def send(self, due: Sequence[Due]) -> None:
        """Publish soon, from the outbox thread; never blocks the caller."""
        for item in due:
            self._queue.put(item)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chute-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.publisher.close()

    def _run(self) -> None:
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            fresh = self._take(timeout=max(0.0, min(self.interval, next_sweep - time.monotonic())))
            try:
                if fresh and time.monotonic() >= self._down_until:
                    self._publish(fresh, mark_now=False)
                if self._unmarked and (len(self._unmarked) >= BATCH or time.monotonic() - self._marked_at > MARK_EVERY):
                    self._mark()
                if self.sweep and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.interval
                    if time.monotonic() >= self._down_until:
                        self.sweep_once()
            except BrokerUnavailable as exc:
                self._broker_down(exc)
            except Exception:
                log.exception("the outbox pass failed; the next one retries")
                self._stop.wait(self.interval)
        if self._unmarked:
            self._mark()

    def _mark(self) -> None:
        """Fresh uploads are marked sent in bulk, well inside their grace: one commit a second, not one each."""
        batch, self._unmarked = self._unmarked, []
        self._marked_at = time.monotonic()
        self.store.mark_dispatched(batch)

    def sweep_once(self) -> int:
        """Publish every due job; returns how many went out."""
        total = 0
        while True:
            due = self.store.due(BATCH, self.lease)
            if not due:
                return total
            self._publish(due)
            total += len(due)
            if len(due) < BATCH:
                return total

    def _publish(self, due: list[Due], mark_now: bool = True) -> None:
        self.publisher.publish_jobs([job_id for job_id, _ in due])
        if mark_now:
            self.store.mark_dispatched(due)
        else:
            self._unmarked += due
        if self._down_until:
            log.info("the broker is back; the outbox is publishing again")
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
