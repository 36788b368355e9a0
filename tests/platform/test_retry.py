"""The retry policy's numbers, honoured exactly."""

from __future__ import annotations

import pytest

from chute.errors import HandlerTimeout
from chute.retry import DEFAULT_POLICY, RetryPolicy


def test_the_default_is_three_attempts_in_all() -> None:
    assert DEFAULT_POLICY.attempts == 3


def test_delays_double_from_backoff_and_stop_at_the_cap() -> None:
    policy = RetryPolicy(attempts=10, backoff=2.0, max_backoff=10.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_stays_within_the_upper_half_of_each_delay() -> None:
    policy = RetryPolicy(backoff=4.0, max_backoff=60.0)
    assert policy.delay_bounds(2) == (4.0, 8.0)
    assert policy.delay(2, rand=lambda: 0.0) == 4.0
    assert policy.delay(2, rand=lambda: 1.0) == 8.0


def test_only_listed_errors_are_retried() -> None:
    policy = RetryPolicy(on=(OSError, HandlerTimeout))
    assert policy.covers(FileNotFoundError)
    assert policy.covers(HandlerTimeout)
    assert not policy.covers(ValueError)


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"backoff": -1}])
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
