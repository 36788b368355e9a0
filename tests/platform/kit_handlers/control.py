"""Handlers for the job-control tests: one that lets a test act while its attempt runs, one that
always fails, and one that would run for a minute."""

from __future__ import annotations

import time
from collections.abc import Callable

from chute import Context, Reject, Upload, handler, retry

#: set by a test: each is called with the job id while a ``watched`` attempt runs (an operator acting
#: mid-attempt); the kit runs handlers in its own process, so the test reaches them here
DURING: list[Callable[[str], None]] = []


@handler("text/x-watched", extensions=[".watched"])
@retry(attempts=3, backoff=1.0, on=(OSError,))
def watched(upload: Upload, ctx: Context) -> dict[str, object]:
    """Calls ``DURING``, then succeeds, or fails with a retryable error when the file says ``fail``."""
    for call in DURING:
        call(ctx.job_id)
    if upload.read_bytes() == b"fail":
        raise OSError("fails on purpose, with attempts left")
    return {"attempt": ctx.attempt}


@handler("text/x-doomed", extensions=[".doomed"])
def doomed(upload: Upload, ctx: Context) -> dict[str, object]:
    """Fails at once, for good."""
    raise Reject("this file can never be processed")


@handler("text/x-stall", extensions=[".stall"])
def stall(upload: Upload, ctx: Context) -> dict[str, object]:
    """Runs for a minute unless its process is stopped."""
    time.sleep(60)
    return {}
