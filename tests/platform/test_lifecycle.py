"""The state machine, driven without a broker or a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chute.errors import InvalidTransition
from chute.lifecycle import (
    Cancel,
    CancelRequest,
    Claim,
    JobState,
    after_attempt,
    cancel,
    cancel_request,
    check,
    claim,
    lease_expired,
    recheck_after,
)
from chute.retry import RetryPolicy
from chute.status import AttemptResult, Outcome
from chute.status import JobStatus as S

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(attempts=3, backoff=2.0, max_backoff=60.0, jitter=False)


def job(status: S, attempts: int = 0, **kw: object) -> JobState:
    return JobState(status, attempts, 3, **kw)  # type: ignore[arg-type]


def test_a_pending_job_runs() -> None:
    assert claim(job(S.PENDING), NOW) is Claim.RUN


@pytest.mark.parametrize("status", [S.PROCESSED, S.FAILED])
def test_a_finished_job_is_never_run_again(status: S) -> None:
    assert claim(job(status, 1), NOW) is Claim.SKIP


def test_a_retry_runs_only_when_due() -> None:
    assert claim(job(S.RETRYING, 1, next_attempt_at=NOW + timedelta(seconds=1)), NOW) is Claim.SKIP
    assert claim(job(S.RETRYING, 1, next_attempt_at=NOW), NOW) is Claim.RUN


def test_a_running_job_with_a_live_lease_is_left_alone() -> None:
    live = job(S.RUNNING, 1, lease_expires_at=NOW + timedelta(seconds=5), lease_owner="w1")
    assert claim(live, NOW) is Claim.SKIP


def test_a_running_job_is_taken_back_only_when_its_lease_expired() -> None:
    """Not on a redelivery: a connection cut while its worker still renews the lease costs no attempt."""
    expired = job(S.RUNNING, 1, lease_expires_at=NOW - timedelta(seconds=1), lease_owner="w1")
    live = job(S.RUNNING, 1, lease_expires_at=NOW + timedelta(seconds=5), lease_owner="w1")
    assert claim(expired, NOW) is Claim.RUN
    assert claim(live, NOW) is Claim.SKIP


def test_a_lease_expires_at_its_time_not_before() -> None:
    at = NOW + timedelta(seconds=5)
    assert not lease_expired(job(S.RUNNING, 1, lease_expires_at=at, lease_owner="w1"), NOW)
    assert lease_expired(job(S.RUNNING, 1, lease_expires_at=at, lease_owner="w1"), at)
    assert not lease_expired(job(S.PENDING, 0, lease_expires_at=None), NOW), "only a running job has a lease"


def test_a_cancelled_job_is_never_run() -> None:
    assert claim(job(S.CANCELLED), NOW) is Claim.SKIP


def test_a_published_job_is_rechecked_after_its_age_and_never_sooner_than_the_grace() -> None:
    assert recheck_after(age=0.0, grace=5.0) == 5.0
    assert recheck_after(age=40.0, grace=5.0) == 40.0, "the gaps double: a backlog costs few duplicates"


def test_a_job_whose_last_attempt_killed_its_worker_is_exhausted_not_looped() -> None:
    dead = job(S.RUNNING, 3, lease_expires_at=NOW - timedelta(seconds=1), lease_owner="w1")
    assert claim(dead, NOW) is Claim.EXHAUSTED


def test_success_is_processed_and_notifies() -> None:
    t = after_attempt(job(S.RUNNING, 1), AttemptResult(Outcome.PROCESSED, {"ok": 1}), POLICY, NOW)
    assert t.status is S.PROCESSED and t.event == "processed" and not t.dead_letter


def test_a_retryable_error_waits_the_policy_delay() -> None:
    t = after_attempt(job(S.RUNNING, 2), AttemptResult(Outcome.ERROR, covered=True), POLICY, NOW)
    assert t.status is S.RETRYING
    assert t.next_attempt_at == NOW + timedelta(seconds=4.0)
    assert t.event is None, "no email on an intermediate retry"


def test_the_last_attempt_fails_and_dead_letters() -> None:
    t = after_attempt(job(S.RUNNING, 3), AttemptResult(Outcome.ERROR, covered=True), POLICY, NOW)
    assert t.status is S.FAILED and t.event == "failed" and t.dead_letter


@pytest.mark.parametrize("outcome", [Outcome.REJECTED, Outcome.INVALID])
def test_reject_fails_at_once_even_when_the_policy_covers_the_error(outcome: Outcome) -> None:
    """``@retry(on=(Exception,))`` covers Reject (it is an Exception): the rule, not the policy, refuses it."""
    t = after_attempt(job(S.RUNNING, 1), AttemptResult(outcome, covered=True), POLICY, NOW)
    assert t.status is S.FAILED and t.event == "failed"


def test_an_error_outside_the_policy_fails_at_once() -> None:
    t = after_attempt(job(S.RUNNING, 1), AttemptResult(Outcome.ERROR, covered=False), POLICY, NOW)
    assert t.status is S.FAILED


@pytest.mark.parametrize(("old", "new"), [(S.PROCESSED, S.PENDING), (S.PENDING, S.PROCESSED),
                                          (S.FAILED, S.RUNNING), (S.RETRYING, S.PROCESSED)])
def test_moves_the_lifecycle_does_not_allow_are_refused(old: S, new: S) -> None:
    with pytest.raises(InvalidTransition):
        check(old, new)


# --- an operator's cancel -----------------------------------------------------------------------
@pytest.mark.parametrize("status", [S.PENDING, S.RETRYING])
def test_a_job_not_running_is_cancelled_at_once(status: S) -> None:
    assert cancel(job(status, 1)) is Cancel.NOW
    check(status, S.CANCELLED)


def test_a_running_job_is_only_marked_and_may_then_end_cancelled() -> None:
    assert cancel(job(S.RUNNING, 1, lease_owner="w1")) is Cancel.MARK
    check(S.RUNNING, S.CANCELLED)


@pytest.mark.parametrize("status", [S.PROCESSED, S.FAILED, S.CANCELLED])
def test_a_finished_job_cannot_be_cancelled_and_the_refusal_says_why(status: S) -> None:
    with pytest.raises(InvalidTransition, match=status.value):
        cancel(job(status, 1))


def test_kill_upgrades_a_cancel_request_and_nothing_downgrades_it() -> None:
    assert cancel_request(None, kill=False) is CancelRequest.FINISH
    assert cancel_request(None, kill=True) is CancelRequest.KILL
    assert cancel_request(CancelRequest.FINISH, kill=True) is CancelRequest.KILL
    assert cancel_request(CancelRequest.KILL, kill=False) is CancelRequest.KILL


@pytest.mark.parametrize("result", [AttemptResult(Outcome.PROCESSED, {"ok": 1}),
                                    AttemptResult(Outcome.ERROR, covered=True),
                                    AttemptResult(Outcome.CANCELLED)])
def test_a_marked_job_ends_cancelled_whatever_its_attempt_did_with_no_retry_and_no_mail(result: AttemptResult) -> None:
    marked = job(S.RUNNING, 1, cancel_requested=CancelRequest.FINISH)
    t = after_attempt(marked, result, POLICY, NOW)
    assert t.status is S.CANCELLED and t.finished
    assert t.event is None and not t.dead_letter and t.next_attempt_at is None


def test_a_marked_job_whose_worker_died_is_cancelled_not_run_again() -> None:
    lost = job(S.RUNNING, 1, lease_expires_at=NOW - timedelta(seconds=1), lease_owner="w1",
               cancel_requested=CancelRequest.KILL)
    assert claim(lost, NOW) is Claim.CANCEL
    last = job(S.RUNNING, 3, lease_expires_at=NOW - timedelta(seconds=1), lease_owner="w1",
               cancel_requested=CancelRequest.FINISH)
    assert claim(last, NOW) is Claim.CANCEL, "cancelled, as asked, rather than failed"
    live = job(S.RUNNING, 1, lease_expires_at=NOW + timedelta(seconds=5), lease_owner="w1",
               cancel_requested=CancelRequest.KILL)
    assert claim(live, NOW) is Claim.SKIP, "its own worker ends it"
