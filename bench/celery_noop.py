"""The baseline for bench/dispatch.py: the same no-op work as a Celery task, acks_late, same broker.

Each completion appends its enqueue→done latency to a file of its own process, so nothing but the
task itself runs per message (no result backend)."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(task_acks_late=True, worker_hijack_root_logger=False, task_default_queue=os.environ["BENCH_QUEUE"],
                broker_connection_retry_on_startup=True)
_out = None


@app.task(name="noop")
def noop(enqueued_at: float) -> None:
    global _out
    if _out is None:
        _out = open(os.path.join(os.environ["BENCH_OUT"], f"lat-{os.getpid()}.txt"), "a", buffering=1)  # noqa: SIM115
    _out.write(f"{time.time() - enqueued_at} {time.time()}\n")
