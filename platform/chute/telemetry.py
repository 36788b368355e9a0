"""Counters and a histogram, counted in memory as events happen, and how processes share them.

A counter here only goes up: it counts an event when it happens (an attempt recorded, a job ended, a
retry scheduled, an email sent), never a state read back from the database, so re-running a failed job or
retention deleting rows cannot make it go down. State (the queue's depth) is a gauge the API reads from
the database at scrape time (``chute.api.metrics``).

Sharing: with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client keeps every value in a memory-mapped
file of this process in that directory (named by host and pid), and the API's ``/metrics`` sums the
directory: the API and every ``chute worker`` on one host write to it. Without it (``chute serve``, the
testing kit) values live in this process only. Counting is an in-memory add (plus the mmap write in
multiprocess mode), never I/O of our own: the worker's turn is a hot path. Handler child processes
never count: they never build a ``Telemetry``, so they write no file."""

from __future__ import annotations

import os
import re
import socket
import threading
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values

from chute.errors import ConfigError
from chute.lifecycle import TERMINAL, Claim
from chute.status import JobStatus, Outcome

if TYPE_CHECKING:
    from chute.turns import Claimed, Finished, Recorded

__all__ = ["DIRECTORY_VARIABLE", "DURATION_BUCKETS", "Telemetry", "of", "process_identity", "shared_directory"]

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: seconds; handlers range from a millisecond's parse to the 300 s default timeout
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: what a notifier pass's tally field counts, by the outcome label it is counted under
NOTIFY_OUTCOMES = ("sent", "retry", "failed", "uncertain")


class NotifierTally(Protocol):
    """What one notifier pass reports (``chute.notify.Tally``)."""

    sent: int
    retry: int
    failed: int
    uncertain: int
    released: int
    unreachable: str | None


def shared_directory() -> Path | None:
    """The directory every process's metrics are written to, or None when they stay in memory."""
    folder = os.environ.get(DIRECTORY_VARIABLE)
    return Path(folder) if folder else None


_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


_identity: dict[int, str] = {}


def process_identity() -> str:
    """What names this process's files: host name and process id, so containers that share one volume
    (each with its own pid 1) never write into each other's file. No ``_``: the collector splits on it.
    prometheus-client asks on every add (to see a fork), so it is one dict lookup."""
    pid = os.getpid()
    found = _identity.get(pid)
    if found is None:
        found = _identity[pid] = f"{_HOST}-{pid}"
    return found


def _share_values(folder: Path) -> None:
    """Values backed by this process's files in ``folder`` for every metric built from now on. It is the
    variable prometheus-client itself reads at import; here it also takes effect when set later (before
    the first ``Telemetry``), and the files are named by ``process_identity``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{DIRECTORY_VARIABLE}: cannot use {str(folder)!r}: {exc}") from None
    if not getattr(values.ValueClass, "chute_shared", False):
        shared = values.MultiProcessValue(process_identifier=process_identity)  # type: ignore[no-untyped-call]
        shared.chute_shared = True
        values.ValueClass = shared


class Telemetry:
    """The event counters of one runtime (one per process in multiprocess mode). Each method takes what
    the caller already holds and adds to counters in memory: no query, no I/O."""

    def __init__(self) -> None:
        folder = shared_directory()
        if folder is not None:
            _share_values(folder)
        self.registry = r = CollectorRegistry()
        self.uploads = Counter("chute_uploads", "Uploads answered, by HTTP status", ["code"], registry=r)
        self.upload_bytes = Counter("chute_upload_bytes", "Bytes of accepted uploads", registry=r)
        self.started = Counter("chute_attempts_started", "Handler attempts started (claimed), by handler",
                               ["handler"], registry=r)
        self.attempts = Counter("chute_attempts", "Handler attempts ended, by handler and outcome (a lost attempt "
                                "is counted here when it ends its job; one retried shows as started minus ended)",
                                ["handler", "outcome"], registry=r)
        self.finished = Counter("chute_jobs_finished", "Jobs that reached a final status, by handler and status "
                                "(a re-run job that ends again counts again)", ["handler", "status"], registry=r)
        self.retries = Counter("chute_retries_scheduled", "Retries scheduled by a handler's retry policy",
                               ["handler"], registry=r)
        self.notifications = Counter("chute_notifications", "Emails tried, by outcome: sent, retry (a temporary "
                                     "failure), failed, uncertain, unreachable (no server: handed back)",
                                     ["outcome"], registry=r)
        self.duration = Histogram("chute_handler_duration_seconds", "How long handler attempts took, by handler",
                                  ["handler"], buckets=DURATION_BUCKETS, registry=r)
        self._children: dict[tuple[str, ...], Any] = {}  # labels() costs a lock and checks: once per series

    def _series(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- the worker -------------------------------------------------------------------------------
    def recorded(self, finished: Sequence[Finished], recorded: Sequence[Recorded]) -> None:
        """A turn committed these outcomes: count each attempt, its duration, and where its job went."""
        for item, rec in zip(finished, recorded, strict=True):
            if rec.transition is None or rec.job is None:
                continue  # stale: another worker took the job over, and its record is the one that counts
            handler: str = rec.job.handler
            self._series(self.attempts, handler, item.result.outcome.value).inc()
            self._series(self.duration, handler).observe(item.result.duration)
            status = rec.transition.status
            if status is JobStatus.RETRYING:
                self._series(self.retries, handler).inc()
            elif rec.transition.finished:
                self._series(self.finished, handler, status.value).inc()

    def claimed(self, claimed: Sequence[Claimed]) -> None:
        """A turn committed these claims: attempts started, and jobs a claim ended because the worker of
        their running attempt died (out of attempts: ``failed``; marked for cancel: ``cancelled``); that
        attempt counts as ``lost``. ``c.job`` is the row as the turn left it, so its status is the final one."""
        for c in claimed:
            if c.job is None or c.decision is Claim.SKIP:
                continue
            if c.decision is Claim.RUN:
                self._series(self.started, c.job.handler).inc()
            elif c.job.status in TERMINAL:
                self._series(self.attempts, c.job.handler, Outcome.LOST.value).inc()
                self._series(self.finished, c.job.handler, JobStatus(c.job.status).value).inc()

    def handed_back(self, handlers: Iterable[str]) -> None:
        """A stopping worker handed these attempts back, uncounted against their jobs."""
        for handler in handlers:
            self._series(self.attempts, handler, Outcome.INTERRUPTED.value).inc()

    def ended(self, handler: str, status: JobStatus) -> None:
        """A job reached a final status outside a worker's turn (an operator cancelled it)."""
        self._series(self.finished, handler, status.value).inc()

    # --- the notifier -----------------------------------------------------------------------------
    def notified(self, tally: NotifierTally) -> None:
        """One notifier pass ended: count its emails by outcome (rows handed back by a stopping
        notifier were never tried and are not counted)."""
        for outcome in NOTIFY_OUTCOMES:
            n = getattr(tally, outcome)
            if n:
                self._series(self.notifications, outcome).inc(n)
        if tally.unreachable and tally.released:
            self._series(self.notifications, "unreachable").inc(tally.released)

    def exposition(self) -> str:
        """This process's own values in the text format (the API's /metrics adds the rest)."""
        return generate_latest(self.registry).decode()


_lock = threading.Lock()
_by_owner: weakref.WeakKeyDictionary[object, Telemetry] = weakref.WeakKeyDictionary()
_process: list[Telemetry] = []


def of(owner: object) -> Telemetry:
    """The counters of the runtime ``owner`` (its ``Database``) belongs to: the API, the worker and the
    notifier of one runtime count into one set, and two runtimes in one process (tests) into two. In
    multiprocess mode there is one set per process: the mmap file is the process's."""
    with _lock:
        if shared_directory() is not None:
            if not _process:
                _process.append(Telemetry())
            return _process[0]
        found = _by_owner.get(owner)
        if found is None:
            found = _by_owner[owner] = Telemetry()
        return found
