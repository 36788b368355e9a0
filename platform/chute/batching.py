"""Group commit without a thread of its own: concurrent callers share one flush.

A caller hands in an item and blocks until a flush that includes it has finished. Whoever finds no
flush running becomes the leader and flushes everything waiting; the others wait for it. Under load,
many uploads share one transaction or one fsync; with a single caller it costs one lock.

One bad item must not fail the others that happened to share its flush: when ``isolate`` says a
batch's error is about an item (a row the database refuses) rather than about the flush itself, the
batch is flushed again one item at a time, and only the items that fail alone see an error."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, flush: Callable[[list[T]], None], max_batch: int = 512,
                 isolate: Callable[[BaseException], bool] | None = None) -> None:
        self._flush = flush
        self._max = max_batch
        self._isolate = isolate
        self._cond = threading.Condition()
        self._waiting: list[T] = []
        self._asked = 0  # tickets handed out; item n has ticket n
        self._done = 0  # every ticket up to this one has been flushed
        self._running = False
        #: the error of each failed ticket, until its caller takes it (every caller does, once)
        self._errors: dict[int, BaseException] = {}

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
            error = self._errors.pop(ticket, None)
        if error is not None:
            raise error

    def _lead(self) -> None:
        """Called with the lock held; flushes the oldest waiting items with the lock released."""
        self._running = True
        batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
        first, last = self._done + 1, self._done + len(batch)
        self._cond.release()
        errors: dict[int, BaseException] = {}
        try:
            errors = self._run(batch, first)
        finally:
            self._cond.acquire()
            self._running = False
            self._done = last
            self._errors.update(errors)
            self._cond.notify_all()

    def _run(self, batch: list[T], first: int) -> dict[int, BaseException]:
        """Flush ``batch``; the errors by ticket (none when it went through)."""
        try:
            self._flush(batch)
            return {}
        except BaseException as exc:
            if len(batch) == 1 or self._isolate is None or not self._isolate(exc):
                return dict.fromkeys(range(first, first + len(batch)), exc)  # every caller in the batch
        errors: dict[int, BaseException] = {}
        for ticket, item in enumerate(batch, first):
            try:
                self._flush([item])
            except BaseException as exc:
                errors[ticket] = exc
        return errors
