"""The retry policy's numbers, honoured exactly."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chute.errors import HandlerTimeout
from chute.retry import DEFAULT_POLICY, RetryPolicy


def test_the_default_is_three_attempts_in_all() -> None:
    assert DEFAULT_POLICY.attempts == 3


def test_delays_double_from_backoff_and_stop_at_the_cap() -> None:
    policy = RetryPolicy(attempts=10, backoff=2.0, max_backoff=10.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_only_adds_up_to_a_quarter() -> None:
    policy = RetryPolicy(backoff=4.0, max_backoff=60.0)
    assert policy.delay_bounds(2) == (8.0, 10.0)
    assert policy.delay(2, rand=lambda: 0.0) == 8.0
    assert policy.delay(2, rand=lambda: 1.0) == 10.0


@given(backoff=st.floats(0.0, 100.0), max_backoff=st.floats(0.0, 1000.0), attempt=st.integers(1, 80),
       seed=st.integers(0, 2**32 - 1))
def test_no_draw_waits_less_than_backoff_doubled_or_more_than_the_cap(backoff: float, max_backoff: float,
                                                                      attempt: int, seed: int) -> None:
    policy = RetryPolicy(attempts=100, backoff=backoff, max_backoff=max_backoff)
    least = min(max_backoff, backoff * 2 ** (attempt - 1))
    draws = random.Random(seed)
    for _ in range(50):
        delay = policy.delay(attempt, draws.random)
        assert least <= delay <= min(max_backoff, least * 1.25)


def test_only_listed_errors_are_retried() -> None:
    policy = RetryPolicy(on=(OSError, HandlerTimeout))
    assert policy.covers(FileNotFoundError)
    assert policy.covers(HandlerTimeout)
    assert not policy.covers(ValueError)


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"backoff": -1}])
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
