"""Handlers that misbehave on purpose, for the dispatcher tests (loaded with CHUTE_HANDLERS=this folder).

Each one's type comes from its extension (text/x-…), so a test picks a behaviour by file name."""

from __future__ import annotations

import asyncio
import os
import time

from chute import Context, Reject, Upload, handler, retry


@handler("text/plain", extensions=[".txt"])
def echo(upload: Upload, ctx: Context) -> dict[str, object]:
    """Succeeds at once."""
    return {"size": upload.size, "attempt": ctx.attempt}


@handler("text/x-flaky", extensions=[".flaky"])
@retry(attempts=3, backoff=0.4, max_backoff=2.0, on=(OSError,))
def flaky(upload: Upload, ctx: Context) -> dict[str, object]:
    """Fails its first two attempts, then succeeds."""
    if ctx.attempt < 3:
        raise OSError(f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


@handler("text/x-broken", extensions=[".broken"])
@retry(attempts=3, backoff=0.2, max_backoff=1.0, on=(OSError,))
def broken(upload: Upload, ctx: Context) -> dict[str, object]:
    """Always fails with a retryable error."""
    raise OSError(f"always broken (attempt {ctx.attempt})")


@handler("text/x-picky", extensions=[".picky"])
@retry(attempts=3, backoff=0.2, on=(OSError,))
def picky(upload: Upload, ctx: Context) -> dict[str, object]:
    """Fails with an error its policy does not retry."""
    raise ValueError("not a retryable error")


@handler("text/x-reject", extensions=[".reject"])
def rejects(upload: Upload, ctx: Context) -> dict[str, object]:
    """Rejects the file: no retry."""
    raise Reject("this file can never be processed")


@handler("text/x-slow", extensions=[".slow"])
def slow(upload: Upload, ctx: Context) -> dict[str, object]:
    """Sleeps for the number of seconds written in the file, then succeeds."""
    seconds = float(upload.read_bytes().decode() or "1")
    time.sleep(seconds)
    return {"slept": seconds, "attempt": ctx.attempt}


@handler("text/x-hang", extensions=[".hang"], timeout=1)
@retry(attempts=2, backoff=0.1)
def hang(upload: Upload, ctx: Context) -> dict[str, object]:
    """Runs far past its one-second timeout."""
    time.sleep(120)
    return {}


@handler("text/x-hang-async", extensions=[".ahang"], timeout=1)
@retry(attempts=1)
async def hang_async(upload: Upload, ctx: Context) -> dict[str, object]:
    """An async handler past its timeout is cancelled."""
    await asyncio.sleep(120)
    return {}


@handler("text/x-crash", extensions=[".crash"])
@retry(attempts=2, backoff=0.1)
def crash(upload: Upload, ctx: Context) -> dict[str, object]:
    """Kills the process running it, as a segfaulting parser would."""
    os._exit(11)


@handler("text/x-hog", extensions=[".hog"], memory_mb=256)
@retry(attempts=3, backoff=0.1)
def hog(upload: Upload, ctx: Context) -> dict[str, object]:
    """Asks for far more memory than its 256 MiB limit allows, as a 100 MB CSV of commas would."""
    hoard = bytearray(1024 * 1024 * 1024)
    return {"size": len(hoard)}


@handler("text/x-sulky", extensions=[".sulky"])
@retry(attempts=3, backoff=0.1, on=(OSError,))
def sulky(upload: Upload, ctx: Context) -> dict[str, object]:
    """Sleeps for the seconds written in the file, then fails with an error it retries."""
    time.sleep(float(upload.read_bytes().decode() or "1"))
    raise OSError(f"attempt {ctx.attempt} fails after its nap")


@handler("text/x-stubborn", extensions=[".stubborn"])
@retry(attempts=3, backoff=3.0, max_backoff=3.0, on=(OSError,))
def stubborn(upload: Upload, ctx: Context) -> dict[str, object]:
    """Always fails with a retryable error; each retry waits three seconds."""
    raise OSError(f"attempt {ctx.attempt} fails on purpose")
