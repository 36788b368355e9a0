"""The baseline's Celery side: one task, ``acks_late``, that marks the upload's row processed.

Run: celery -A tasks worker --pool prefork -c 2 (bench/cost.py starts it, from bench/baseline).
Environment: BASELINE_BROKER (amqp URL), BASELINE_QUEUE (queue name), BASELINE_DB (the SQLite file),
BASELINE_QUORUM=1 to declare the queue as a quorum queue (Celery's default is a classic one)."""

from __future__ import annotations

import os
import time

import store
from celery import Celery
from kombu import Queue

app = Celery("baseline", broker=os.environ.get("BASELINE_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
QUEUE = os.environ.get("BASELINE_QUEUE", "baseline")
app.conf.update(
    task_acks_late=True,  # ack after the task has run: a worker killed mid-task gets it redelivered
    task_ignore_result=True,  # no result backend: the row is the result
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if os.environ.get("BASELINE_QUORUM") == "1":
    app.conf.task_queues = [Queue(QUEUE, routing_key=QUEUE, queue_arguments={"x-queue-type": "quorum"})]


@app.task(name="baseline.process")
def process(job_id: str) -> None:
    conn = store.db()  # per worker process, made after the fork
    with conn:
        conn.execute("UPDATE jobs SET status = 'processed', processed_at = ? WHERE id = ?", (time.time(), job_id))
