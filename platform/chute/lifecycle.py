"""The job state machine as pure functions: (job, outcome, policy, now) → the next state.

No broker, no database, no clock of its own: a unit test drives every rule directly. It imports only
the leaf modules ``status``, ``retry`` and ``errors``."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chute.errors import InvalidTransition
from chute.retry import RetryPolicy
from chute.status import AttemptResult, JobStatus, Outcome

S = JobStatus
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    # RUNNING → RUNNING: another worker takes back a job whose worker died; → PENDING: handed back on shutdown
    # → CANCELLED: an operator marked it, and its attempt has ended
    S.RUNNING: frozenset({S.PROCESSED, S.RETRYING, S.FAILED, S.RUNNING, S.PENDING, S.CANCELLED}),
    S.RETRYING: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    S.FAILED: frozenset({S.PENDING}),  # an operator re-runs it
    S.PROCESSED: frozenset(),
    S.CANCELLED: frozenset(),
}
#: states a job never leaves on its own (``failed`` only by an operator's re-run)
TERMINAL = frozenset({S.PROCESSED, S.FAILED, S.CANCELLED})
#: outcomes that end the job whatever the policy says: the file can never be processed
NEVER_RETRIED = frozenset({Outcome.REJECTED, Outcome.INVALID})
#: what an operator's cancel ends at once: nothing of the job is running
CANCEL_AT_ONCE = frozenset({S.PENDING, S.RETRYING})


class CancelRequest(str, enum.Enum):
    """An operator's cancel of a running job, kept on the row (``jobs.cancel_requested``) until its
    attempt ends; then the job is ``cancelled``, whatever the attempt did."""

    #: let the attempt run to its end
    FINISH = "finish"
    #: stop the attempt's process now (its worker learns of it at its next heartbeat)
    KILL = "kill"


class Cancel(enum.Enum):
    #: pending or retrying: cancelled now, never run again
    NOW = "now"
    #: running: marked (a ``CancelRequest``), cancelled when the attempt ends
    MARK = "mark"


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
    lease_owner: str | None = None
    cancel_requested: CancelRequest | None = None


class Claim(enum.Enum):
    #: run it: this message starts attempt ``attempts + 1``
    RUN = "run"
    #: nothing to do (done already, running elsewhere, or not due yet): acknowledge and drop the message
    SKIP = "skip"
    #: the previous attempt was the last and its worker died: record the failure, do not run again
    EXHAUSTED = "exhausted"
    #: an operator asked to cancel the job and its worker died: record it cancelled, do not run again
    CANCEL = "cancel"


def lease_expired(job: JobState, now: datetime) -> bool:
    """The one rule for a lease: a running job whose owner has not renewed it by now is up for grabs.
    The relay uses it to make such a job due again; a claim uses it to take the job over."""
    return job.status is S.RUNNING and (job.lease_expires_at is None or job.lease_expires_at <= now)


def claim(job: JobState, now: datetime) -> Claim:
    """Whether a fetched message may start an attempt.

    A ``running`` job is taken back only when its lease has expired. A message RabbitMQ redelivers
    (its consumer's connection dropped) does not take a job from an owner that still renews the lease:
    a cut connection must not cost a live worker's attempt nor run the handler twice at once. A worker
    that really died stops renewing, and the lease brings its job back."""
    if job.status in TERMINAL:
        return Claim.SKIP
    if job.status is S.RETRYING and job.next_attempt_at is not None and job.next_attempt_at > now:
        return Claim.SKIP
    if job.status is S.RUNNING and not lease_expired(job, now):
        return Claim.SKIP
    if job.cancel_requested is not None:
        return Claim.CANCEL
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
    """Where a job goes once attempt number ``job.attempts`` has ended with ``attempt``: processed; or
    retried when the error is one the policy covers and attempts are left; otherwise failed. A job an
    operator marked for cancel is cancelled, whatever the attempt did: no retry, no email."""
    if job.cancel_requested is not None:
        return Transition(S.CANCELLED)
    if attempt.outcome is Outcome.PROCESSED:
        return Transition(S.PROCESSED, event="processed")
    retried = attempt.covered and attempt.outcome not in NEVER_RETRIED
    if retried and job.attempts < job.max_attempts:
        delay = policy.delay(job.attempts, rand)
        return Transition(S.RETRYING, next_attempt_at=now + timedelta(seconds=delay), delay=delay)
    return Transition(S.FAILED, event="failed", dead_letter=True)


def cancel(job: JobState) -> Cancel:
    """What an operator's cancel does to ``job``; a job that has ended cannot be cancelled."""
    if job.status in CANCEL_AT_ONCE:
        return Cancel.NOW
    if job.status is S.RUNNING:
        return Cancel.MARK
    raise InvalidTransition(f"the job is {job.status.value}: it has ended, there is nothing to cancel")


def cancel_request(current: CancelRequest | None, kill: bool) -> CancelRequest:
    """The request a running job carries after one more cancel: ``kill`` upgrades, nothing downgrades."""
    if kill or current is CancelRequest.KILL:
        return CancelRequest.KILL
    return CancelRequest.FINISH


def lost_attempt_error(attempt: int) -> dict[str, Any]:
    return {"type": "WorkerLost", "traceback": "",
            "message": f"the worker running attempt {attempt} stopped before recording it "
                       "(killed, out of memory, or crashed)"}


def recheck_after(age: float, grace: float) -> float:
    """How long after publishing a job's message the relay publishes it again if the job has not
    started (the message may have been lost): the job's age, at least ``grace``. The gaps double, so a
    long backlog costs a few duplicate messages per job, never a stream of them."""
    return max(grace, age)
