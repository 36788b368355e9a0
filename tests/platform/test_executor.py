"""The process pool handlers run in: a pool that breaks as a whole is started again, not left refusing."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from chute.executor import ProcessExecutor
from chute.registry import load_handlers
from chute.runner import Task
from chute.status import AttemptResult, Outcome

HANDLERS = Path(__file__).resolve().parent / "kit_handlers"


def task(tmp_path: Path, job_id: str) -> Task:
    original = tmp_path / job_id
    original.write_bytes(b"x")
    return Task(job_id=job_id, handler="echo", attempt=1, path=str(original), filename="a.txt",
                content_type="text/plain", size=1, sha256="", artifacts_dir=str(tmp_path / f"{job_id}-artifacts"),
                scratch_root=str(tmp_path / "scratch"), timeout=30)


def test_a_broken_pool_is_retried_whatever_the_policy_covers(tmp_path: Path) -> None:
    """Pebble breaks the whole pool when one child dies, so an attempt that ran beside it fails too:
    that is no fault of its handler, and ``on=(OSError,)`` must not make it final (a chaos run saw a
    slow job failed after 1 of 6 attempts because a sibling killed itself)."""
    executor = ProcessExecutor(1, HANDLERS, load_handlers(HANDLERS))
    try:
        broken: concurrent.futures.Future[AttemptResult] = concurrent.futures.Future()
        broken.set_exception(BrokenProcessPool("All workers expired"))
        patient = dataclasses.replace(task(tmp_path, "a"), handler="patient")  # on=(OSError,) only
        result = executor._outcome(patient, broken)
        assert (result.outcome, (result.error or {}).get("type"), result.covered) == \
            (Outcome.CRASHED, "PoolBroken", True)
    finally:
        executor.close(wait=False)


def test_a_broken_pool_fails_its_attempts_as_crashed_and_the_next_attempt_gets_a_new_pool(tmp_path: Path) -> None:
    executor = ProcessExecutor(1, HANDLERS, load_handlers(HANDLERS))
    try:
        broken: concurrent.futures.Future[AttemptResult] = concurrent.futures.Future()
        broken.set_exception(BrokenProcessPool("All workers expired"))  # what pebble hands every task in flight
        result = executor._outcome(task(tmp_path, "a"), broken)
        assert (result.outcome, (result.error or {}).get("type"), result.covered) == \
            (Outcome.CRASHED, "PoolBroken", True)
        executor._pool.stop()  # the old pool is unusable, as a broken one is
        done = threading.Event()
        got: list[AttemptResult] = []
        executor.submit(task(tmp_path, "b"), lambda _t, r: (got.append(r), done.set()))
        assert done.wait(60), "the attempt after the break never finished"
        assert got[0].outcome is Outcome.PROCESSED and executor.restarts == 1
    finally:
        executor.close(wait=False)


def test_a_dead_process_fails_the_attempt_it_died_in_not_the_one_it_had_finished() -> None:
    """pebble's own lookup blamed the first task on file for the dead process: one it had finished but
    whose result was not read yet. Driven through pebble's real ``find_expired_task``."""
    import types

    import pebble.pool.process as pebble_process

    import chute.executor  # noqa: F401  (installs the fix, as the worker does)

    finished = types.SimpleNamespace(id=1, worker_id=4242)  # its result is still in the pipe
    other = types.SimpleNamespace(id=2, worker_id=5151)
    died_in = types.SimpleNamespace(id=3, worker_id=4242)
    manager = types.SimpleNamespace(task_manager=types.SimpleNamespace(tasks={1: finished, 2: other, 3: died_in}))
    assert pebble_process.PoolManager.find_expired_task(manager, 4242) is died_in  # type: ignore[arg-type]
    assert pebble_process.PoolManager.find_expired_task(manager, 5151) is other  # type: ignore[arg-type]
