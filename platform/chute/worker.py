"""The worker loop: moves jobs between a source, the executor and the job service, and nothing else.

Each turn: collect the attempts that finished, fetch what fits in the free slots, then record and
claim in one transaction, and only after it commits acknowledge, start what was claimed, and renew
the leases of what runs. The renewal's statement also answers which running jobs an operator
cancelled: an attempt cancelled with ``kill`` is stopped then; any other ends ``cancelled`` when its
outcome is recorded, which reads the request off the row the turn reads anyway.

The source's own faults (a broker gone) stay in the source; a database error keeps every finished
attempt and fetched message and retries the write with backoff; anything else is a bug, logged with
its traceback and counted, and the loop goes on with its state intact."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from chute import telemetry
from chute.executor import Executor, ResultQueue
from chute.jobs import Claimed, Finished, JobService, Recorded, worker_id
from chute.lifecycle import CancelRequest, Claim
from chute.models import Job
from chute.registry import DEFAULT_TIMEOUT, Registry
from chute.runner import Task
from chute.sources import JobMessage, JobSource
from chute.storage import Storage

log = logging.getLogger("chute.worker")
#: errors of a database that is down, locked or restarting: retried, never taken for a bug
DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeout)
#: the longest a turn waits on its source when nothing is running (a source's own poll may be shorter)
IDLE_WAIT, BUSY_WAIT = 1.0, 0.05
FAST_ATTEMPT = 0.05
FAST_LOOKAHEAD, MAX_LOOKAHEAD = 64, 500  # times the concurrency; claimed beyond the free slots
#: once an attempt has run this long, its worker renews leases (and so hears of cancels) this often,
#: not only every third of the lease: a ``kill`` reaches a long attempt within seconds. Quick attempts
#: never bring the renewal forward, so a stream of them costs what it did.
CONTROL_EVERY = 2.0
DB_BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class Fences:
    """What every attempt of this worker is held to, unless its handler says otherwise."""

    #: the address space a handler's process may use, in MiB (0: no limit)
    memory_mb: int = 0
    max_result_bytes: int = 1024 * 1024


@dataclass
class Running:
    task: Task
    #: every message for this job fetched while it runs (a redelivery after a reconnect, a re-publish):
    #: all acknowledged once its outcome is committed
    messages: list[JobMessage] = field(default_factory=list)
    #: when the attempt was handed to the executor (``time.monotonic()``)
    since: float = field(default_factory=time.monotonic)
    #: the executor was told to stop it (an operator's ``kill``)
    killed: bool = False


class Worker:
    def __init__(self, jobs: JobService, source: JobSource, registry: Registry, storage: Storage,
                 executor: Executor, *, concurrency: int, scratch: Path, lease: float = 30.0,
                 shutdown_grace: float = 30.0, describe: str = "", fences: Fences = Fences()) -> None:
        self.jobs, self.source, self.registry, self.storage = jobs, source, registry, storage
        self.executor, self.concurrency, self.scratch = executor, concurrency, scratch
        self.lease, self.shutdown_grace, self.describe = lease, shutdown_grace, describe
        self.fences = fences
        self.id = worker_id()
        self.stopping = threading.Event()
        self.ready = threading.Event()
        #: faults survived, by kind: ``database`` (a write retried), ``bug`` (logged with its traceback)
        self.faults: collections.Counter[str] = collections.Counter()
        self._results = ResultQueue(on_put=source.wake)
        self._finished: list[Finished] = []  # ended, outcome not yet committed
        self._fetched: list[JobMessage] = []  # fetched, claim not yet committed
        self._running: dict[str, Running] = {}
        self._typical = 1.0  # seconds an attempt takes, smoothed; start by assuming slow
        self._renewed = time.monotonic()
        self._db_backoff, self._db_retry_at = 0.0, 0.0
        self.idle_wait = IDLE_WAIT
        self.control_every = CONTROL_EVERY
        #: attempts this worker has started
        self.started = 0
        self.telemetry = telemetry.of(jobs.db)  # /metrics counters: an in-memory add per event, no I/O

    # --- the loop -----------------------------------------------------------------------------------
    def run(self, burst: bool = False) -> None:
        """Until ``stop()``; with ``burst`` only until nothing is fetched, running or unrecorded."""
        self.ready.set()
        log.info("worker %s fetching jobs from %s (concurrency %d)", self.id, self.describe or "its source",
                 self.concurrency)
        try:
            while not self.stopping.is_set():
                try:
                    busy = self._turn()
                except Exception:
                    self.faults["bug"] += 1
                    log.exception("worker %s: a turn failed (a bug); nothing it held is dropped", self.id)
                    self.stopping.wait(0.5)
                    continue
                if burst and not busy:
                    break
        finally:
            self._shutdown()

    def stop(self, now: bool = False) -> None:
        """Finish running attempts within ``shutdown_grace``; ``now`` hands them back at once."""
        if now:
            self.shutdown_grace = 0.0
        self.stopping.set()
        self.source.wake()

    def _turn(self) -> bool:
        """One pass; whether anything is still in hand."""
        self._collect(block=len(self._running) >= self.concurrency)
        if time.monotonic() < self._db_retry_at:  # the database is failing: wait, but keep the source alive
            self.source.fetch(0, min(self._db_retry_at - time.monotonic(), self._wait_for()))
            return True
        if not self._fetched:
            free = self.concurrency + self._lookahead() - len(self._running) + len(self._finished)
            timeout = 0.0 if self._finished else self._wait_for()
            self._fetched = self._adopt(self.source.fetch(max(free, 0), timeout))
        if self._finished or self._fetched:
            self._commit()
        self._renew()
        return bool(self._running or self._finished or self._fetched)

    def _collect(self, block: bool) -> None:
        done = self._results.take_all(block_for=BUSY_WAIT if block and not self._finished else 0.0)
        self._finished += [Finished(task.job_id, task.attempt, result) for task, result in done]

    def _adopt(self, messages: list[JobMessage]) -> list[JobMessage]:
        """A message for a job this worker is running stays with it, to be acked with its outcome."""
        fresh = []
        for message in messages:
            running = self._running.get(message.job_id)
            if running is None:
                fresh.append(message)
            else:
                running.messages.append(message)
        return fresh

    def _commit(self) -> None:
        try:
            recorded, claimed = self.jobs.record_and_claim(self._finished, self._fetched, self.id, self.registry,
                                                           self.lease)
        except DATABASE_ERRORS:
            self.faults["database"] += 1
            self._db_backoff = min(max(self._db_backoff * 2, 0.05), DB_BACKOFF_MAX)
            self._db_retry_at = time.monotonic() + self._db_backoff
            log.exception("worker %s: the database refused a turn; %d finished attempts and %d messages are kept "
                          "and written again in %.2fs", self.id, len(self._finished), len(self._fetched),
                          self._db_backoff)
            return
        self._db_backoff = 0.0
        finished, self._finished, self._fetched = self._finished, [], []
        acks = self._after_record(finished, recorded) + self._after_claim(claimed)
        self.source.ack(acks)

    def _after_record(self, finished: list[Finished], recorded: list[Recorded]) -> list[JobMessage]:
        self.telemetry.recorded(finished, recorded)
        acks: list[JobMessage] = []
        for item, rec in zip(finished, recorded, strict=True):
            self._typical = 0.8 * self._typical + 0.2 * item.result.duration
            running = self._running.pop(item.job_id, None)
            messages = running.messages if running is not None else []
            if rec.transition is not None and rec.transition.dead_letter and messages:
                self.source.dead_letter(messages[0], "failed", rec.job)
            acks += messages
        if finished:
            self.source.tune(self.fast)
        return acks

    def _after_claim(self, claimed: list[Claimed]) -> list[JobMessage]:
        self.telemetry.claimed(claimed)
        acks: list[JobMessage] = []
        for outcome in claimed:
            if outcome.decision is Claim.RUN and outcome.job is not None:
                task = task_for(outcome.job, self.storage, self.registry, self.scratch, self.fences)
                self._running[outcome.job_id] = Running(task, [outcome.message])
                self.started += 1
                self.executor.submit(task, self._results.put)
                continue
            if outcome.decision is None:
                self.source.dead_letter(outcome.message, f"no job {outcome.job_id}")
            elif outcome.decision is Claim.EXHAUSTED:
                self.source.dead_letter(outcome.message, "out of attempts: the worker died", outcome.job)
            acks.append(outcome.message)
        return acks

    def _wait_for(self) -> float:
        """How long a fetch may wait: until the next lease renewal while attempts run."""
        if not self._running:
            return self.idle_wait
        return max(0.0, min(self.idle_wait, self._next_renewal() - time.monotonic()))

    def _next_renewal(self) -> float:
        """Every third of the lease; every ``control_every`` once the oldest running attempt (the first
        in ``_running``, which keeps claim order) has run that long."""
        oldest = next(iter(self._running.values())).since
        return min(self._renewed + self.lease / 3, max(self._renewed, oldest) + self.control_every)

    def _renew(self) -> None:
        if not self._running or time.monotonic() < self._next_renewal():
            return
        self._renewed = time.monotonic()
        try:
            requests = self.jobs.heartbeat(list(self._running), self.id, self.lease)
        except DATABASE_ERRORS:
            self.faults["database"] += 1
            self._renewed -= self.lease / 4  # try again soon: the leases are running out
            log.exception("worker %s: could not renew the leases of %d running jobs", self.id, len(self._running))
            return
        for job_id, request in requests.items():
            running = self._running.get(job_id)
            if request is CancelRequest.KILL and running is not None and not running.killed:
                running.killed = True
                stopped = self.executor.kill(job_id)
                log.info("worker %s: job %s cancelled with kill: %s", self.id, job_id,
                         "its attempt is stopped" if stopped else "its attempt ends first (it cannot be stopped)")

    @property
    def fast(self) -> bool:
        """Whether recent attempts were quick (a few milliseconds): then the cost is the bookkeeping."""
        return self._typical < FAST_ATTEMPT

    def _lookahead(self) -> int:
        """How many jobs to claim beyond the free slots. With fast handlers, many: one turn (one commit)
        then carries dozens of jobs. With slow ones, none: waiting work stays in the queue, where an
        idle worker can take it."""
        return min(FAST_LOOKAHEAD * self.concurrency, MAX_LOOKAHEAD) if self.fast else 0

    # --- stopping -----------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Unclaimed messages go straight back; running attempts get ``shutdown_grace`` to finish and
        be recorded; what is left is handed back, uncounted."""
        if self._fetched:
            self.source.requeue(self._fetched)
            self._fetched = []
        deadline = time.monotonic() + self.shutdown_grace
        while self._running and time.monotonic() < deadline and self.shutdown_grace > 0:  # stop(now=True) cuts it
            self._collect(block=True)
            if self._finished and time.monotonic() >= self._db_retry_at:
                self._commit()
        self._collect(block=False)
        if self._finished:  # one last try, backoff or not: a finished attempt is never dropped by choice
            self._db_retry_at = 0.0
            self._commit()
            if self._finished:
                log.error("worker %s: stopping with %d outcomes unrecorded (the database refused them); their "
                          "leases expire and the jobs run again", self.id, len(self._finished))
        if self._running:
            self.executor.close(wait=False)
            leftovers = list(self._running.items())
            self._running.clear()
            try:
                self.jobs.hand_back([(job_id, r.task.attempt) for job_id, r in leftovers], self.id)
                self.telemetry.handed_back(r.task.handler for _, r in leftovers)
            except DATABASE_ERRORS:
                log.exception("worker %s: could not hand back %d jobs; their leases expire and another worker "
                              "takes them over", self.id, len(leftovers))
            self.source.requeue([m for _, r in leftovers for m in r.messages])
        else:
            self.executor.close(wait=True)
        self.source.close()
        log.info("worker %s stopped", self.id)


def task_for(job: Job, storage: Storage, registry: Registry, scratch: Path, fences: Fences = Fences()) -> Task:
    """The plain-data description of the attempt a claimed job is about to make."""
    spec = registry.get(job.handler)
    original, artifacts = storage.locations(job.storage_key)
    memory = spec.memory_mb if spec is not None and spec.memory_mb is not None else fences.memory_mb
    return Task(job_id=job.id, handler=job.handler, attempt=job.attempts, path=original, filename=job.filename,
                content_type=job.content_type, size=job.size, sha256=job.sha256, artifacts_dir=artifacts,
                scratch_root=str(scratch), timeout=spec.timeout if spec else DEFAULT_TIMEOUT, memory_mb=memory,
                max_result_bytes=fences.max_result_bytes)
