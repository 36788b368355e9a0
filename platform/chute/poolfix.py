"""A fix to pebble's ProcessPool: when a handler process dies, the attempt it was running is the one
that fails, not an earlier one that process had already finished.

pebble (5.2.3 and before) finds the task of a dead process by scanning its tasks for the first with
that process id. A process that finished task A and died in task B still has A on file when A's
result is not read yet (results and deaths are handled by two threads): A gets ``ProcessExpired``,
its real result is dropped, and B is never resolved until its timeout. A chaos run showed it: a slow
job failed with the exit code of another job's ``os._exit(9)``, and that job sat ``running``. A
process runs one task at a time, in the order it acknowledged them, so the one it died in is the
last it acknowledged: ``latest_task_of`` picks that one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pebble.pool.process as _pebble_process


def latest_task_of(running_tasks: Iterable[Any], worker_id: int) -> Any:
    """The task ``worker_id`` acknowledged last (tasks are held in the order they were scheduled, and
    a process takes them in that order); LookupError, as pebble's lookup raises, when there is none."""
    found = None
    for task in running_tasks:
        if task.worker_id == worker_id:
            found = task
    if found is None:
        raise LookupError("Not found")
    return found


def install() -> None:
    """Put ``latest_task_of`` where pebble's pool manager looks the task up (idempotent)."""
    _pebble_process.task_worker_lookup = latest_task_of  # type: ignore[attr-defined]
