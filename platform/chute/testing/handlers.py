"""``run_handler``: one handler, in-process, with the same Upload and Context a worker builds."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chute.context import Context
from chute.errors import Reject
from chute.registry import HandlerSpec, load_handlers, spec_of
from chute.runner import Task, invoke, prepare, to_json
from chute.sniff import detect

_TMP = Path(tempfile.gettempdir())


@dataclass
class HandlerRun:
    """What one call produced: the result, the context, and the artifacts (name → path)."""

    result: Any
    context: Context
    attempts: int = 1
    artifacts: dict[str, Path] = field(default_factory=dict)


def _spec(func_or_name: Callable[..., Any] | str) -> HandlerSpec:
    if isinstance(func_or_name, str):
        registry = load_handlers(Path(os.environ.get("CHUTE_HANDLERS", "handlers")))
        spec = registry.get(func_or_name)
        if spec is None:
            raise LookupError(f"no handler named {func_or_name!r}; known: {', '.join(sorted(registry.by_name))}")
        return spec
    return spec_of(func_or_name)


def run(func_or_name: Callable[..., Any] | str, path_or_bytes: str | os.PathLike[str] | bytes,
        filename: str | None = None, *, retries: bool = False, **ctx: Any) -> HandlerRun:
    """Run a handler on a file (a path, or bytes written to a temp file) and return everything.

    ``ctx`` overrides: ``job_id``, ``attempt``, ``content_type``, ``timeout``. With ``retries=True``
    the handler's retry policy is applied (without its delays) until it succeeds or gives up."""
    spec = _spec(func_or_name)
    workdir = Path(tempfile.mkdtemp(prefix="chute-run-", dir=_TMP))
    if isinstance(path_or_bytes, bytes):
        name = filename or "upload" + (spec.extensions[0] if spec.extensions else "")
        path = workdir / "original"
        path.write_bytes(path_or_bytes)
    else:
        path = Path(path_or_bytes)
        name = filename or path.name
    with path.open("rb") as f:
        head = f.read(8192)
    claimed = {ext: next((t for t in s.types if "*" not in t), "") for s in [spec] for ext in s.extensions}
    content_type = ctx.pop("content_type", None) or detect(head, name, None, claimed).mime
    job_id = ctx.pop("job_id", "test-job")
    attempt = int(ctx.pop("attempt", 1))
    timeout = float(ctx.pop("timeout", spec.timeout))
    if ctx:
        raise TypeError(f"unknown overrides: {', '.join(ctx)}")
    policy = spec.retry
    while True:
        task = Task(job_id, spec.name, attempt, str(path), name, content_type, path.stat().st_size, "",
                    str(workdir / "artifacts"), str(workdir / "scratch"), timeout)
        upload, context = prepare(spec, task)
        try:
            result = to_json(invoke(spec, upload, context, timeout, thread_timeout=True))
            artifacts = {n: Path(task.artifacts_dir) / n for n in context.artifacts}
            return HandlerRun(result, context, attempt, artifacts)
        except Reject:
            raise
        except Exception as exc:
            if not (retries and policy.covers(type(exc)) and attempt < policy.attempts):
                raise
            attempt += 1


def run_handler(func_or_name: Callable[..., Any] | str, path_or_bytes: str | os.PathLike[str] | bytes,
                filename: str | None = None, **ctx: Any) -> Any:
    """The handler's result (or its exception, raised), exactly as a worker would have stored it."""
    return run(func_or_name, path_or_bytes, filename, **ctx).result
