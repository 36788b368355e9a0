"""Handlers for the worker-loop tests: one that succeeds, one whose retries wait ten minutes."""

from __future__ import annotations

import time

from chute import Context, Upload, handler, retry


@handler("text/plain", extensions=[".txt"])
def echo(upload: Upload, ctx: Context) -> dict[str, object]:
    return {"attempt": ctx.attempt}


@handler("text/x-patient", extensions=[".patient"])
@retry(attempts=3, backoff=600.0, max_backoff=3600.0, on=(OSError,))
def patient(upload: Upload, ctx: Context) -> dict[str, object]:
    """Fails twice with a retryable error; each retry waits at least ten minutes by the policy."""
    if ctx.attempt < 3:
        raise OSError(f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


@handler("text/x-nap", extensions=[".nap"])
def nap(upload: Upload, ctx: Context) -> dict[str, object]:
    """Takes long enough (60 ms) that a worker claims one job at a time: work queued stays shareable."""
    time.sleep(0.06)
    return {"attempt": ctx.attempt}


@handler("text/x-verbose", extensions=[".verbose"])
def verbose(upload: Upload, ctx: Context) -> dict[str, object]:
    """Returns two megabytes of JSON: more than a job may keep."""
    return {"everything": "x" * (2 * 1024 * 1024)}
