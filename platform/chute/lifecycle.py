"""The job state machine as pure functions: (job, outcome, policy, now) → the next state.

No broker, no database, no clock of its own: a unit test drives every rule directly."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chute.errors import InvalidTransition
from chute.models import JobStatus
from chute.retry import RetryPolicy
from chute.runner import AttemptResult

S = JobStatus
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.FAILED}),
    # RUNNING → RUNNING: another worker takes back a job whose worker died; → PENDING: handed back on shutdown
    S.RUNNING: frozenset({S.PROCESSED, S.RETRYING, S.FAILED, S.RUNNING, S.PENDING}),
    S.RETRYING: frozenset({S.RUNNING, S.FAILED}),
    S.FAILED: frozenset({S.PENDING}),  # an operator re-runs it
    S.PROCESSED: frozenset(),
}
TERMINAL = frozenset({S.PROCESSED, S.FAILED})


def check(old: JobStatus, new: JobStatus) -> None:
    if new not in ALLOWED[old]:
        raise InvalidTransition(f"a {old.value} job cannot become {new.value}")


@dataclass(frozen=True)
class JobState:
    """The fields the rules read; a Job row or a test's literal both fit."""

    status: JobStatus
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None = None
    lease_expires_at: datetime | None = None
    #: None on a running job means the relay found its lease expired and put it up for grabs
    lease_owner: str | None = None


class Claim(enum.Enum):
    #: run it: this delivery starts attempt ``attempts + 1``
    RUN = "run"
    #: nothing to do (done already, running elsewhere, or not due yet): acknowledge and drop the message
    SKIP = "skip"
    #: the previous attempt was the last and its worker died: record the failure, do not run again
    EXHAUSTED = "exhausted"


def claim(job: JobState, now: datetime, redelivered: bool = False) -> Claim:
    """Whether a delivered message may start an attempt.

    A ``running`` job is taken back when its lease has expired (or the relay released it), or when
    the broker redelivers the message (it does so only after the consumer holding it went away)."""
    if job.status in TERMINAL:
        return Claim.SKIP
    if job.status is S.RETRYING and job.next_attempt_at is not None and job.next_attempt_at > now:
        return Claim.SKIP
    if job.status is S.RUNNING:
        expired = job.lease_owner is None or job.lease_expires_at is None or job.lease_expires_at <= now
        if not (expired or redelivered):
            return Claim.SKIP
    if job.attempts >= job.max_attempts:
        return Claim.EXHAUSTED
    return Claim.RUN


@dataclass(frozen=True)
class Transition:
    status: JobStatus
    next_attempt_at: datetime | None = None
    delay: float | None = None
    #: the notification event this transition emits, if any
    event: str | None = None
    dead_letter: bool = False

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def after_attempt(job: JobState, attempt: AttemptResult, policy: RetryPolicy, now: datetime,
                  rand: Callable[[], float] = random.random) -> Transition:
    """Where a job goes once attempt number ``job.attempts`` has ended with ``attempt``."""
    if attempt.outcome == "processed":
        return Transition(S.PROCESSED, event="processed")
    if attempt.retryable and job.attempts < job.max_attempts:
        delay = policy.delay(job.attempts, rand)
        return Transition(S.RETRYING, next_attempt_at=now + timedelta(seconds=delay), delay=delay)
    return Transition(S.FAILED, event="failed", dead_letter=True)


def lost_attempt_error(attempt: int) -> dict[str, Any]:
    return {"type": "WorkerLost", "traceback": "",
            "message": f"the worker running attempt {attempt} stopped before recording it "
                       "(killed, out of memory, or crashed)"}
