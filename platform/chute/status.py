"""The words the rules are written in: where a job stands and how an attempt ended.

A leaf module (no SQLAlchemy, no broker, no file): ``lifecycle`` and ``retry`` import it, and so do
the models, the runner and the API."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class JobStatus(str, enum.Enum):
    """Where a job stands; see lifecycle.py for the moves between them."""

    #: accepted and stored, waiting for a worker
    PENDING = "pending"
    #: a worker holds the lease and runs the handler
    RUNNING = "running"
    #: an attempt failed; the next one is due at ``next_attempt_at``
    RETRYING = "retrying"
    #: the handler returned; ``result`` holds what it returned
    PROCESSED = "processed"
    #: rejected, or out of attempts; ``error`` says why
    FAILED = "failed"
    #: an operator stopped it before it ran again: never run, nobody mailed
    CANCELLED = "cancelled"


class Outcome(str, enum.Enum):
    """How one attempt ended, as the ``job_attempts.outcome`` column stores it."""

    #: the handler returned a result JSON can hold
    PROCESSED = "processed"
    #: the handler raised an exception (``covered`` says whether the policy's ``on`` lists it)
    ERROR = "error"
    #: the handler raised ``Reject``: the file can never be processed
    REJECTED = "rejected"
    #: the handler returned something JSON cannot hold
    INVALID = "invalid"
    #: past the handler's timeout, stopped
    TIMEOUT = "timeout"
    #: the process running the handler died
    CRASHED = "crashed"
    #: the worker running it died (recorded by whoever takes the job back)
    LOST = "lost"
    #: handed back by a stopping worker, not counted against the job
    INTERRUPTED = "interrupted"
    #: stopped by an operator's ``cancel?kill=true``: not a crash, never retried
    CANCELLED = "cancelled"


@dataclass
class AttemptResult:
    """What one run of a handler produced, as plain data (it crosses a process boundary)."""

    outcome: Outcome
    result: Any = None
    error: dict[str, Any] | None = None
    #: the error is one the handler's retry policy lists in ``on`` (a fact; lifecycle decides)
    covered: bool = False
    artifacts: list[str] = field(default_factory=list)
    duration: float = 0.0
