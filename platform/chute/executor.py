"""Where attempts run. Processes by default: a handler past its timeout can be stopped (a thread
cannot), a segfaulting parser takes down only its own process, and CPU-bound handlers use every core."""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

from pebble import ProcessExpired, ProcessPool

from chute import poolfix
from chute.errors import HandlerCrashed, HandlerTimeout, JobCancelled, PoolBroken
from chute.registry import Registry
from chute.runner import Task, error_info, init_child, run_in_child, run_spec
from chute.status import AttemptResult, Outcome

log = logging.getLogger("chute.executor")
poolfix.install()  # a dead process fails the attempt it died in (see chute.poolfix)
Done = Callable[[Task, AttemptResult], None]


class Executor(Protocol):
    def submit(self, task: Task, done: Done) -> None: ...
    def kill(self, job_id: str) -> bool: ...
    def close(self, wait: bool) -> None: ...


class ProcessExecutor:
    """A pool of spawned child processes (spawn, not fork: the parent runs threads).

    pebble's pool can break as a whole: a child that dies before the pool has noted which task it took
    ("All workers expired") aborts every task in flight with ``BrokenProcessPool`` and refuses new ones.
    Those attempts end ``crashed`` (counted: one of them killed its process), and the next submit
    starts a new pool, so the worker goes on instead of failing every job after.

    ``kill`` stops one attempt (an operator's ``cancel?kill=true``): pebble ends the process running
    it and starts another in its slot; the attempt ends ``cancelled``, not ``crashed``."""

    def __init__(self, concurrency: int, handlers: Path, registry: Registry) -> None:
        self.registry = registry
        self.concurrency, self.handlers = concurrency, handlers.resolve()
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._broken = False
        #: pools started again after breaking
        self.restarts = 0
        #: the attempt each job has in the pool, and the jobs whose attempt ``kill`` stopped
        self._inflight: dict[str, concurrent.futures.Future[AttemptResult]] = {}
        self._killed: set[str] = set()

    def _new_pool(self) -> ProcessPool:
        return ProcessPool(max_workers=self.concurrency, context=multiprocessing.get_context("spawn"),
                           initializer=init_child, initargs=(str(self.handlers),))

    def submit(self, task: Task, done: Done) -> None:
        with self._lock:
            if self._broken:
                self._restart()
            try:
                future = self._pool.schedule(run_in_child, args=(task,), timeout=task.timeout)
            except RuntimeError:  # the pool broke between its last result and this submit
                log.warning("the handler pool refused a task; starting a new pool")
                self._restart()
                future = self._pool.schedule(run_in_child, args=(task,), timeout=task.timeout)
            self._inflight[task.job_id] = future
        submitted = time.monotonic()
        future.add_done_callback(lambda f: done(task, self._finished(task, f, submitted)))

    def kill(self, job_id: str) -> bool:
        """Stop the attempt of ``job_id`` now, running or still queued; False when there is none."""
        with self._lock:
            future = self._inflight.get(job_id)
            if future is None or future.done():
                return False
            self._killed.add(job_id)
        if future.cancel():  # runs the done callback here, which takes the lock: not held now
            return True
        with self._lock:
            self._killed.discard(job_id)
        return False

    def running(self, job_id: str) -> bool:
        """Whether a child process has taken the attempt of ``job_id``."""
        with self._lock:
            future = self._inflight.get(job_id)
        return future is not None and future.running()

    def _finished(self, task: Task, future: concurrent.futures.Future[AttemptResult],
                  submitted: float) -> AttemptResult:
        with self._lock:
            if self._inflight.get(task.job_id) is future:
                del self._inflight[task.job_id]
            killed = task.job_id in self._killed
            self._killed.discard(task.job_id)
        if killed and future.cancelled():
            exc = JobCancelled(f"{task.handler} was stopped by an operator's cancel (kill=true)")
            return AttemptResult(Outcome.CANCELLED, error=error_info(exc, tb=False), covered=False,
                                 duration=time.monotonic() - submitted)
        return self._outcome(task, future)

    def _restart(self) -> None:
        old, self._pool, self._broken = self._pool, self._new_pool(), False
        self.restarts += 1
        old.stop()
        threading.Thread(target=old.join, kwargs={"timeout": 10}, daemon=True).start()

    def _outcome(self, task: Task, future: concurrent.futures.Future[AttemptResult]) -> AttemptResult:
        spec = self.registry.get(task.handler)
        try:
            return future.result()
        except concurrent.futures.TimeoutError:
            exc: Exception = HandlerTimeout(f"{task.handler} ran past its timeout of {task.timeout:g}s "
                                            "and was stopped")
            return AttemptResult(Outcome.TIMEOUT, error=error_info(exc, tb=False), duration=task.timeout,
                                 covered=spec.retry.covers(HandlerTimeout) if spec else True)
        except ProcessExpired as expired:
            exc = HandlerCrashed(f"the process running {task.handler} died (exit code {expired.exitcode})")
            return AttemptResult(Outcome.CRASHED, error=error_info(exc, tb=False),
                                 covered=spec.retry.covers(HandlerCrashed) if spec else True)
        except BrokenProcessPool:
            with self._lock:
                self._broken = True
            exc = PoolBroken("a handler process died and took the pool with it (this attempt's or one "
                                 "running beside it); the pool is started again")
            # Retried whatever the policy covers: the process that died may be another job's, and the
            # attempts still count, so a file that breaks the pool every time ends failed all the same.
            return AttemptResult(Outcome.CRASHED, error=error_info(exc, tb=False), covered=True)
        except concurrent.futures.CancelledError:
            exc = HandlerCrashed("the attempt was cancelled before it finished")
            return AttemptResult(Outcome.CRASHED, error=error_info(exc, tb=False), covered=True)
        except Exception as exc:  # pickling or pool failure: report it as the attempt's error
            log.exception("running %s on job %s failed outside the handler", task.handler, task.job_id)
            return AttemptResult(Outcome.ERROR, error=error_info(exc), covered=True)

    def close(self, wait: bool) -> None:
        if wait:
            self._pool.close()
        else:
            self._pool.stop()
        self._pool.join(timeout=10)


class InlineExecutor:
    """Runs each attempt in the calling thread: for tests and ``chute_app.drain()``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def submit(self, task: Task, done: Done) -> None:
        spec = self.registry.get(task.handler)
        if spec is None:
            result = AttemptResult(Outcome.ERROR, covered=True, error={
                "type": "UnknownHandler", "traceback": "", "message": f"no handler named {task.handler!r}"})
        else:
            result = run_spec(spec, task, thread_timeout=True)
        done(task, result)

    def kill(self, job_id: str) -> bool:
        """An attempt here has ended before anyone can ask: a cancel waits for its outcome."""
        return False

    def close(self, wait: bool) -> None:
        pass


class ResultQueue:
    """Finished attempts, handed from executor threads to the worker's own thread."""

    def __init__(self, on_put: Callable[[], None] | None = None) -> None:
        self._queue: queue.SimpleQueue[tuple[Task, AttemptResult]] = queue.SimpleQueue()
        self._on_put = on_put

    def put(self, task: Task, result: AttemptResult) -> None:
        self._queue.put((task, result))
        if self._on_put is not None:
            self._on_put()

    def take_all(self, block_for: float = 0.0) -> list[tuple[Task, AttemptResult]]:
        items = []
        try:
            items.append(self._queue.get(timeout=block_for) if block_for else self._queue.get_nowait())
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return items
