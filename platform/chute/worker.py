"""The consumer: take job messages, claim them, run their handlers, record, then acknowledge.

Everything touching kombu happens on the worker's own thread; the executor hands finished attempts
back through a queue. Claims and outcomes are written in batches, one transaction each, and a
message is acknowledged only after its outcome is committed."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kombu.messaging import Consumer

from chute.broker import Broker, Publisher, job_message
from chute.executor import Executor, ResultQueue
from chute.jobs import Claimed, Delivery, Finished, JobStore, Recorded, worker_id
from chute.lifecycle import Claim
from chute.models import Job
from chute.registry import DEFAULT_TIMEOUT, Registry
from chute.runner import AttemptResult, Task
from chute.storage import Storage

log = logging.getLogger("chute.worker")
TICK = 0.002
BUSY_WAIT = 0.05
NO_WAIT = 0.0001  # "only what is already here"; 0 would make py-amqp spin
FAST_ATTEMPT = 0.05
SLOW_PREFETCH, FAST_PREFETCH, FAST_LOOKAHEAD = 2, 128, 64  # times the concurrency
MAX_PREFETCH, MAX_LOOKAHEAD = 1000, 500
RECONNECT_MAX = 10.0
RECONCILE_EVERY = 30.0


@dataclass
class InFlight:
    message: Any
    task: Task
    generation: int


class Worker:
    def __init__(self, store: JobStore, broker: Broker, registry: Registry, storage: Storage,
                 executor: Executor, *, concurrency: int, scratch: Path, lease: float = 30.0,
                 shutdown_grace: float = 30.0) -> None:
        self.store, self.broker, self.registry, self.storage = store, broker, registry, storage
        self.executor = executor
        self.concurrency = concurrency
        self.prefetch = SLOW_PREFETCH * concurrency
        self._channel: Any = None
        self._consumer: Any = None
        self.scratch = scratch
        self.lease = lease
        self.shutdown_grace = shutdown_grace
        self.id = worker_id()
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self._results = ResultQueue()
        self._finished: list[tuple[Task, AttemptResult]] = []
        self._to_ack: list[Any] = []
        self._typical = 1.0  # seconds an attempt takes, smoothed; start by assuming slow
        self._channel_generation = 0
        self._inbox: list[tuple[Delivery, Any]] = []
        self._inflight: dict[str, InFlight] = {}
        self._generation = 0  # bumped on reconnect: older messages can no longer be acked
        self._dead = Publisher(broker)
        self._last_heartbeat = time.monotonic()
        self._last_recover = 0.0
        self._executor_closed = False
        self._last_reconcile = 0.0

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Consume until ``stop()``; reconnects with backoff when the broker goes away."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                self._consume()
                delay = 0.5
            except Exception as exc:
                if self.stopping.is_set():
                    break
                log.warning("broker connection lost (%s: %s); reconnecting in %.1fs", type(exc).__name__, exc,
                            delay)
                self._generation += 1
                self._inbox.clear()  # the broker gives those messages to someone else
                self._service(drain_only=True)
                self.stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
        self._shutdown()

    def stop(self, now: bool = False) -> None:
        """Finish in-flight attempts within ``shutdown_grace``; ``now`` hands them back at once."""
        if now:
            self.shutdown_grace = 0.0
        self.stopping.set()

    def _consume(self) -> None:
        with self.broker.connection() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            self.broker.declare(conn)
            channel = conn.channel()
            self._channel, self._channel_generation = channel, self._generation
            channel.basic_qos(0, self.prefetch, False)
            consumer = Consumer(channel, [self.broker.work_queue], on_message=self._on_message,
                                no_ack=False)
            consumer.consume()
            self._consumer = consumer
            self.ready.set()
            log.info("worker %s consuming %s on %s (concurrency %d)", self.id, self.broker.work_queue.name,
                     self.broker.safe_url, self.concurrency)
            self.broker.recover_orphans()
            self._reconcile()
            while not self.stopping.is_set():
                self._pump(conn)
                if self.broker.is_amqp:
                    conn.heartbeat_check()
                self._service()
            consumer.cancel()
            self._finish_inflight(channel)

    def _on_message(self, message: Any) -> None:
        try:
            body = json.loads(message.body)
            job_id = body["job"]
            if not isinstance(job_id, str) or not job_id:
                raise ValueError("no job id")
        except (ValueError, KeyError, TypeError) as exc:
            self._dead_letter(message.body, f"undecodable message: {type(exc).__name__}: {exc}")
            message.ack()
            return
        redelivered = bool((message.delivery_info or {}).get("redelivered"))
        self._inbox.append((Delivery(job_id, redelivered), message))

    # --- one pass -------------------------------------------------------------------------------
    def _pump(self, conn: Any) -> None:
        """Wait for whatever can move us on: a finished attempt when every slot is busy (returning the
        moment one finishes), otherwise a message from the broker; then take every message already
        here, so that one turn claims them all (one event per drain_events call)."""
        timeout = TICK
        if len(self._inflight) >= self.concurrency:
            self._finished += self._results.take_all(block_for=BUSY_WAIT)
            timeout = NO_WAIT
        try:
            conn.drain_events(timeout=timeout)
            for _ in range(self.prefetch):
                conn.drain_events(timeout=NO_WAIT)
        except TimeoutError:
            pass

    def _service(self, drain_only: bool = False) -> None:
        """Record what finished and claim what fits in the freed slots, in one transaction."""
        finished, self._finished = self._finished + self._results.take_all(), []
        batch: list[tuple[Delivery, Any]] = []
        if not drain_only:
            self._adopt_redeliveries()
            free = self.concurrency + self._lookahead() - len(self._inflight) + len(finished)
            batch, self._inbox = self._inbox[:max(free, 0)], self._inbox[max(free, 0):]
        if finished or batch:
            recorded, claimed = self.store.step([Finished(t.job_id, t.attempt, r) for t, r in finished],
                                                [d for d, _ in batch], self.id, self.registry, self.lease)
            self._after_record(finished, recorded)
            self._after_claim(batch, claimed)
            self._flush_acks()
        if drain_only:
            return
        now = time.monotonic()
        if now - self._last_heartbeat > self.lease / 3:
            self._last_heartbeat = now
            self.store.heartbeat(list(self._inflight), self.id, self.lease)
        if self.broker.embedded_root is not None and now - self._last_recover > 2.0:
            self._last_recover = now
            self.broker.recover_orphans()
            if now - self._last_reconcile > RECONCILE_EVERY:
                self._reconcile()

    def _reconcile(self) -> None:
        """Embedded broker: a job the database says is queued but has no message is sent again."""
        self._last_reconcile = time.monotonic()
        queued = self.broker.queued_job_ids
        if self.broker.embedded_root is not None:
            self.store.resend_stranded(lambda: queued() or set())

    @property
    def fast(self) -> bool:
        """Whether recent attempts were quick (a few milliseconds): then the cost is the bookkeeping."""
        return self._typical < FAST_ATTEMPT

    def _lookahead(self) -> int:
        """How many jobs to claim beyond the free slots. With fast handlers, many: one turn (one commit)
        then carries dozens of jobs. With slow ones, none: waiting work stays with the broker, where an
        idle worker can take it."""
        return min(FAST_LOOKAHEAD * self.concurrency, MAX_LOOKAHEAD) if self.fast else 0

    def _adapt_prefetch(self) -> None:
        """Fast handlers get a deep prefetch (big turns); slow ones a shallow one (a fair share between
        workers). Messages held beyond the shallow depth go back to the broker for other workers."""
        wanted = min((FAST_PREFETCH if self.fast else SLOW_PREFETCH) * self.concurrency, MAX_PREFETCH)
        if wanted == self.prefetch or self._channel is None:
            return
        self.prefetch = wanted
        self._channel.basic_qos(0, wanted, False)
        # RabbitMQ applies a per-consumer prefetch to consumers started after it: subscribe again.
        self._consumer.cancel()
        self._consumer.consume()
        if not self.fast and len(self._inbox) > wanted:
            for _, message in self._inbox[wanted:]:
                message.requeue()
            self._inbox = self._inbox[:wanted]

    def _adopt_redeliveries(self) -> None:
        """After a reconnect the broker resends what we were running; keep running it, ack the new copy."""
        keep = []
        for delivery, message in self._inbox:
            flight = self._inflight.get(delivery.job_id)
            if flight is not None and flight.generation != self._generation:
                flight.message, flight.generation = message, self._generation
            else:
                keep.append((delivery, message))
        self._inbox = keep

    def _after_claim(self, batch: list[tuple[Delivery, Any]], claimed: list[Claimed]) -> None:
        outcome: Claimed
        for (delivery, message), outcome in zip(batch, claimed, strict=True):
            if outcome.decision is Claim.RUN and outcome.job is not None:
                task = self._task(outcome.job)
                self._inflight[delivery.job_id] = InFlight(message, task, self._generation)
                self.executor.submit(task, self._results.put)
                continue
            if outcome.decision is None:
                self._dead_letter(message.body, f"no job {delivery.job_id}")
            elif outcome.decision is Claim.EXHAUSTED:
                self._dead_letter(job_message(delivery.job_id), "out of attempts: the worker died",
                                  job=outcome.job)
            self._to_ack.append(message)
        self._log_skips(claimed)

    def _after_record(self, finished: list[tuple[Task, AttemptResult]], recorded: list[Recorded]) -> None:
        for _, result in finished:
            self._typical = 0.8 * self._typical + 0.2 * result.duration
        if finished and self._generation == self._channel_generation:
            self._adapt_prefetch()
        rec: Recorded
        for (task, _), rec in zip(finished, recorded, strict=True):
            flight = self._inflight.pop(task.job_id, None)
            if rec.transition is not None and rec.transition.dead_letter:
                self._dead_letter(job_message(task.job_id), "failed", job=rec.job)
            if flight is not None and flight.generation == self._generation:
                self._to_ack.append(flight.message)

    def _flush_acks(self) -> None:
        """Acknowledge what this turn committed. On RabbitMQ every tag below the oldest message still
        held goes in one ``multiple`` ack; the rest one by one (the embedded broker acks each)."""
        acks, self._to_ack = self._to_ack, []
        if not acks:
            return
        if self.broker.is_amqp:
            held = [m.delivery_tag for _, m in self._inbox]
            held += [f.message.delivery_tag for f in self._inflight.values() if f.generation == self._generation]
            oldest = min(held, default=None)
            below = [m for m in acks if oldest is None or m.delivery_tag < oldest]
            if len(below) > 1:
                max(below, key=lambda m: m.delivery_tag).ack(multiple=True)
                acks = [m for m in acks if m not in below]
        for message in acks:
            message.ack()

    def _task(self, job: Job) -> Task:
        return task_for(job, self.storage, self.registry, self.scratch)

    def _dead_letter(self, body: bytes | str, reason: str, job: Job | None = None) -> None:
        headers: dict[str, Any] = {"x-chute-reason": reason}
        if job is not None:
            headers.update({"x-chute-job": job.id, "x-chute-attempts": job.attempts,
                            "x-chute-error": (job.error or {}).get("type", "")})
        else:
            log.warning("dead-lettered a message: %s", reason)
        raw = body.encode() if isinstance(body, str) else body
        self._dead.publish([raw], queue=self.broker.dead, headers=headers)

    def _log_skips(self, claimed: list[Claimed]) -> None:
        for c in claimed:
            if c.decision is Claim.SKIP:
                log.debug("skipped a duplicate delivery of %s", c.job_id)

    # --- stopping -------------------------------------------------------------------------------
    def _finish_inflight(self, channel: Any) -> None:
        """Unclaimed messages go straight back; running attempts get ``shutdown_grace`` to finish."""
        for _, message in self._inbox:
            message.requeue()
        self._inbox.clear()
        started = time.monotonic()
        while self._inflight and time.monotonic() < started + self.shutdown_grace:  # stop(now=True) cuts it short
            self._finished += self._results.take_all(block_for=0.05)
            self._service(drain_only=True)
        if self._inflight:
            self.executor.close(wait=False)
            self._executor_closed = True
            leftovers = list(self._inflight.items())
            self.store.hand_back([(job_id, f.task.attempt) for job_id, f in leftovers], self.id)
            for _, flight in leftovers:
                if flight.generation == self._generation:
                    flight.message.requeue()
            self._inflight.clear()

    def _shutdown(self) -> None:
        if self._inflight:  # the connection is gone: hand back in the database; the broker redelivers
            self.store.hand_back([(job_id, f.task.attempt) for job_id, f in self._inflight.items()], self.id)
            self._inflight.clear()
        if not self._executor_closed:
            self.executor.close(wait=True)
        self._dead.close()
        log.info("worker %s stopped", self.id)


def task_for(job: Job, storage: Storage, registry: Registry, scratch: Path) -> Task:
    """The plain-data description of the attempt a claimed job is about to make."""
    spec = registry.get(job.handler)
    original, artifacts = storage.locations(job.storage_key)
    return Task(job_id=job.id, handler=job.handler, attempt=job.attempts, path=original, filename=job.filename,
                content_type=job.content_type, size=job.size, sha256=job.sha256, artifacts_dir=artifacts,
                scratch_root=str(scratch), timeout=spec.timeout if spec else DEFAULT_TIMEOUT)
