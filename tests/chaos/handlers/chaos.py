"""Handlers for the chaos run (loaded with CHUTE_HANDLERS=this folder). Each one's type comes from its
extension (text/x-chaos-…), so the harness picks a behaviour by file name, and its parameters from
the file's first line (the rest of the file is a token that makes every upload unique).

What each one must end as, given what the harness does to the workers, is written down beside it in
``tests/chaos/harness.py`` (``BEHAVIOURS``): keep the two in step."""

from __future__ import annotations

import os
import time

from chute import Context, HandlerCrashed, Upload, handler, retry

#: attempts for the handlers that should end ``processed``: enough that random worker kills rarely
#: take every one of them (a job whose every attempt was lost ends ``failed`` with ``WorkerLost``)
SURVIVOR_ATTEMPTS = 6


def _parameter(upload: Upload) -> str:
    return upload.read_bytes().decode().split("\n", 1)[0].strip()


@handler("text/x-chaos-fast", extensions=[".fast"])
@retry(attempts=SURVIVOR_ATTEMPTS, backoff=0.2, max_backoff=1.0, on=(OSError,))
def chaos_fast(upload: Upload, ctx: Context) -> dict[str, object]:
    """Returns at once."""
    return {"attempt": ctx.attempt}


@handler("text/x-chaos-slow", extensions=[".slow"])
@retry(attempts=SURVIVOR_ATTEMPTS, backoff=0.2, max_backoff=1.0, on=(OSError,))
def chaos_slow(upload: Upload, ctx: Context) -> dict[str, object]:
    """Sleeps for the seconds on the file's first line (0.2 to 1.5), then returns."""
    seconds = min(max(float(_parameter(upload)), 0.2), 1.5)
    time.sleep(seconds)
    return {"attempt": ctx.attempt, "slept": seconds}


@handler("text/x-chaos-flaky", extensions=[".flaky"])
@retry(attempts=SURVIVOR_ATTEMPTS, backoff=0.2, max_backoff=1.0, on=(OSError,))
def chaos_flaky(upload: Upload, ctx: Context) -> dict[str, object]:
    """Fails its first k attempts (k on the file's first line) with OSError, then returns."""
    k = int(_parameter(upload))
    if ctx.attempt <= k:
        raise OSError(f"flaky: attempt {ctx.attempt} of the first {k} fails on purpose")
    return {"attempt": ctx.attempt, "failed_first": k}


@handler("text/x-chaos-broken", extensions=[".broken"])
@retry(attempts=3, backoff=0.2, max_backoff=1.0, on=(OSError,))
def chaos_broken(upload: Upload, ctx: Context) -> dict[str, object]:
    """Fails every attempt with OSError."""
    raise OSError(f"broken: attempt {ctx.attempt} fails, as every one does")


@handler("text/x-chaos-suicide", extensions=[".suicide"])
@retry(attempts=2, backoff=0.2, max_backoff=1.0, on=(OSError, HandlerCrashed))
def chaos_suicide(upload: Upload, ctx: Context) -> dict[str, object]:
    """Kills the process running it, as a segfaulting parser would; the crash is retried (HandlerCrashed
    is in ``on``), so the job ends ``failed`` after its last attempt rather than at the first."""
    os._exit(9)
