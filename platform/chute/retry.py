"""The retry policy as data, and the one function that turns it into a delay."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
RETRY_ATTR = "__chute_retry__"
#: the most jitter adds, as a fraction of the least wait: spreads retries of a burst of failures apart
JITTER = 0.25


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` counts every run, the first included; the wait after attempt *n* is at least
    ``backoff·2ⁿ⁻¹`` capped at ``max_backoff``; ``jitter`` only adds to it (up to a quarter more, never
    past ``max_backoff``), so ``backoff`` is the least wait an author can count on; only exceptions
    that are instances of ``on`` are retried."""

    attempts: int = 3
    backoff: float = 2.0
    max_backoff: float = 60.0
    jitter: bool = True
    on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")

    def delay_bounds(self, attempt: int) -> tuple[float, float]:
        """The (least, most) wait after failed attempt number ``attempt`` (1-based)."""
        least = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 1000))  # 2.0**1024 overflows
        return (least, min(self.max_backoff, least * (1 + JITTER)) if self.jitter else least)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        low, high = self.delay_bounds(attempt)
        return low + (high - low) * rand()

    def covers(self, error: type[BaseException]) -> bool:
        """Whether an error of this class is one the policy retries."""
        return issubclass(error, self.on)

    def describe(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "jitter": self.jitter,
            "on": [t.__qualname__ for t in self.on],
        }


DEFAULT_POLICY = RetryPolicy()


def retry(
    attempts: int = 3,
    backoff: float = 2.0,
    max_backoff: float = 60.0,
    jitter: bool = True,
    on: tuple[type[BaseException], ...] | type[BaseException] = (Exception,),
) -> Callable[[F], F]:
    """Attach a retry policy to a handler; works above or below ``@handler``."""
    policy = RetryPolicy(attempts, backoff, max_backoff, jitter, on if isinstance(on, tuple) else (on,))

    def decorate(func: F) -> F:
        setattr(func, RETRY_ATTR, policy)
        return func

    return decorate
