"""Group commit without a thread of its own: concurrent callers share one flush.

A caller hands in an item and blocks until a flush that includes it has finished. Whoever finds no
flush running becomes the leader and flushes everything waiting; the others wait for it. Under load,
many uploads share one transaction or one fsync; with a single caller it costs one lock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
KEEP_FAILURES = 256


class GroupCommit(Generic[T]):
    def __init__(self, flush: Callable[[list[T]], None], max_batch: int = 512) -> None:
        self._flush = flush
        self._max = max_batch
        self._cond = threading.Condition()
        self._waiting: list[T] = []
        self._asked = 0  # tickets handed out; item n has ticket n
        self._done = 0  # every ticket up to this one has been flushed
        self._running = False
        self._failures: list[tuple[int, int, BaseException]] = []

    def submit(self, item: T) -> None:
        """Block until ``item`` is flushed; raise what its flush raised."""
        with self._cond:
            self._waiting.append(item)
            self._asked += 1
            ticket = self._asked
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._lead()
            for first, last, error in self._failures:
                if first <= ticket <= last:
                    raise error

    def _lead(self) -> None:
        """Called with the lock held; flushes the oldest waiting items with the lock released."""
        self._running = True
        batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
        first, last = self._done + 1, self._done + len(batch)
        self._cond.release()
        error: BaseException | None = None
        try:
            self._flush(batch)
        except BaseException as exc:  # handed to every caller in the batch
            error = exc
        finally:
            self._cond.acquire()
            self._running = False
            self._done = last
            if error is not None:
                self._failures = [*self._failures[-KEEP_FAILURES:], (first, last, error)]
            self._cond.notify_all()
