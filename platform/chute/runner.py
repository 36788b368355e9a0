"""One attempt of one handler, the same way everywhere: in a worker's child process, inline in tests,
and in ``chute.testing.run_handler``. Whatever happens comes back as data, never as a raised error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chute.context import Context, Upload, job_logger
from chute.errors import HandlerTimeout, InvalidResult, MemoryLimitExceeded, Reject
from chute.registry import HandlerSpec, Registry, load_handlers
from chute.status import AttemptResult, Outcome

TRACEBACK_LINES = 25


@dataclass(frozen=True)
class Task:
    """Everything a child process needs to run an attempt; plain data, so it pickles."""

    job_id: str
    handler: str
    attempt: int
    path: str
    filename: str
    content_type: str
    size: int
    sha256: str
    artifacts_dir: str
    scratch_root: str
    timeout: float
    #: the address space the handler's process may use, in MiB (0: no limit); applied in child processes
    memory_mb: int = 0
    #: the most JSON the result may take
    max_result_bytes: int = 1024 * 1024


def error_info(exc: BaseException, tb: bool = True) -> dict[str, Any]:
    lines = traceback.format_exception(exc) if tb else []
    tail = "".join(lines).splitlines()[-TRACEBACK_LINES:]
    return {"type": type(exc).__qualname__, "message": str(exc), "traceback": "\n".join(tail)}


def prepare(spec: HandlerSpec, task: Task) -> tuple[Upload, Context]:
    """The Upload and Context a handler gets, built the same way by the worker and the testing kit."""
    scratch = Path(task.scratch_root) / f"{task.job_id}-{task.attempt}"
    artifacts = Path(task.artifacts_dir)
    if artifacts.exists():  # an earlier attempt's leftovers are not this one's output
        shutil.rmtree(artifacts, ignore_errors=True)
    upload = Upload(Path(task.path), task.filename, task.content_type, task.size, task.sha256)
    ctx = Context(task.job_id, task.attempt, job_logger(task.job_id, spec.name, task.attempt), scratch,
                  artifacts, spec.name)
    return upload, ctx


def to_json(value: Any, limit: int | None = None) -> Any:
    """The value as it will be stored, or InvalidResult (not JSON, nested too deep, or over ``limit``
    bytes: a result is a summary, and a huge one would weigh on every read of the job)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidResult(f"the handler returned something JSON cannot hold: {exc}") from None
    except RecursionError:
        raise InvalidResult("the handler returned a value nested too deeply to store") from None
    if limit is not None and len(text) > limit:
        raise InvalidResult(f"the handler's result is {len(text)} bytes of JSON, more than the {limit} a job may "
                            "keep (CHUTE_MAX_RESULT_BYTES); save big output with ctx.save_artifact") from None
    return json.loads(text)


def run_spec(spec: HandlerSpec, task: Task, thread_timeout: bool = False) -> AttemptResult:
    """Run ``spec`` on ``task``; with ``thread_timeout`` a sync handler runs in a thread we stop waiting for."""
    upload, ctx = prepare(spec, task)
    started = time.monotonic()
    try:
        result = to_json(invoke(spec, upload, ctx, task.timeout, thread_timeout), task.max_result_bytes)
        return AttemptResult(Outcome.PROCESSED, result, artifacts=list(ctx.artifacts),
                             duration=time.monotonic() - started)
    except Reject as exc:
        return AttemptResult(Outcome.REJECTED, error=error_info(exc), duration=time.monotonic() - started)
    except MemoryError:
        limit = MemoryLimitExceeded(f"{spec.name} went past its memory limit of {task.memory_mb} MiB"
                                    if task.memory_mb else f"{spec.name} ran out of memory")
        return AttemptResult(Outcome.REJECTED, error=error_info(limit, tb=False), duration=time.monotonic() - started)
    except InvalidResult as exc:
        return AttemptResult(Outcome.INVALID, error=error_info(exc, tb=False), duration=time.monotonic() - started)
    except HandlerTimeout as exc:
        return AttemptResult(Outcome.TIMEOUT, error=error_info(exc, tb=False),
                             covered=spec.retry.covers(HandlerTimeout), duration=time.monotonic() - started)
    except Exception as exc:
        return AttemptResult(Outcome.ERROR, error=error_info(exc), covered=spec.retry.covers(type(exc)),
                             duration=time.monotonic() - started)
    finally:
        if ctx.scratch_made:
            shutil.rmtree(ctx.scratch_path, ignore_errors=True)


def invoke(spec: HandlerSpec, upload: Upload, ctx: Context, timeout: float, thread_timeout: bool = False) -> Any:
    """Call the handler with its timeout: async ones are cancelled, sync ones are abandoned in a thread."""
    if spec.is_async:
        async def bounded() -> Any:
            try:
                return await asyncio.wait_for(spec.func(upload, ctx), timeout)
            except TimeoutError:
                raise HandlerTimeout(f"{spec.name} ran past its timeout of {timeout:g}s") from None

        return asyncio.run(bounded())
    if not thread_timeout:
        return spec.func(upload, ctx)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = spec.func(upload, ctx)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"chute-{spec.name}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise HandlerTimeout(f"{spec.name} ran past its timeout of {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# The child-process side: each child loads the handlers once and keeps them.
def _die_with_parent() -> None:
    """Linux: a child whose worker is killed (SIGKILL included) is killed too, not left running."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG



_registry: Registry | None = None


def init_child(handlers_path: str) -> None:
    import logging

    _die_with_parent()
    global _registry
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _registry = load_handlers(Path(handlers_path))


def run_in_child(task: Task) -> AttemptResult:
    if _registry is None:
        raise RuntimeError("init_child was not called in this process")
    spec = _registry.get(task.handler)
    if spec is None:
        # Likely a rolling deploy: another worker may know it, so let the policy retry.
        return AttemptResult(Outcome.ERROR, covered=True, error={
            "type": "UnknownHandler", "traceback": "", "message": f"no handler named {task.handler!r} here"})
    with memory_limit(task.memory_mb):
        return run_spec(spec, task)


#: the RLIMIT_AS this process last set (None: never set)
_memory_applied: int | None = None


@contextlib.contextmanager
def memory_limit(mib: int) -> Iterator[None]:
    """RLIMIT_AS for this (child) process while one attempt runs: an allocation past it raises
    MemoryError in the handler instead of the kernel's OOM killer taking the worker's machine down.
    The limit stays set between attempts (the process runs nothing but attempts), so a run of
    attempts under the same limit costs no system call."""
    import resource

    global _memory_applied
    wanted = max(mib, 0) * 1024 * 1024  # 0: no limit of ours (up to the hard limit)
    if wanted != _memory_applied:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        capped = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        soft = capped if wanted else hard
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        _memory_applied = wanted
    yield
