"""The page's reads, each one bounded: a window of jobs, counts by status, and the last hour's throughput.

Every statement here walks an index a fixed number of rows at most, so a dashboard left open on a
jobs table of millions costs what it costs on a table of thousands:

- ``window`` walks ``ix_jobs_created`` (or the status / handler index) newest first; a search looks
  through the newest ``SEARCH_DEPTH`` jobs under the other filters, not the whole table.
- ``last_hour`` reads the newest ``ATTEMPT_DEPTH`` attempts by primary key, not by an unindexed time
  column; past that many attempts in an hour it says ``truncated``.
- ``counts`` is a ``GROUP BY status`` on the status index (an index scan, not a table scan)."""

from __future__ import annotations

import base64
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select

from chute.db import Database
from chute.jobs import decode_cursor
from chute.models import Attempt, Job, JobStatus, utcnow

#: a search looks through this many of the newest jobs that pass the status and handler filters
SEARCH_DEPTH = 20_000
#: the chart reads at most this many of the newest attempts
ATTEMPT_DEPTH = 20_000
#: an error's message is cut to this in a list row (the job page has the whole error)
ROW_MESSAGE = 300
WINDOW_MINUTES = 60
#: attempts that say nothing about a handler's speed: the worker died, or it handed the job back
NOT_TIMED = {"lost", "interrupted"}
_HEX = re.compile(r"[0-9a-f]{6,64}")
ROW_COLUMNS = (Job.id, Job.status, Job.filename, Job.content_type, Job.size, Job.sha256, Job.handler, Job.attempts,
               Job.max_attempts, Job.error, Job.created_at, Job.updated_at, Job.started_at, Job.finished_at,
               Job.next_attempt_at)


@dataclass(frozen=True)
class Filter:
    """What the operator is looking at: the same filter for the list, the stream and the bulk actions."""

    status: JobStatus | None = None
    handler: str | None = None
    #: a file name (substring, any case), or the start of a sha256 or a job id
    q: str | None = None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _row(values: Sequence[Any]) -> dict[str, Any]:
    """A list row: the job without its result, and its error cut short (JobOut's names, so the page
    renders a row from here and a job from GET /jobs the same way)."""
    row = dict(zip((c.key for c in ROW_COLUMNS), values, strict=True))
    error = row.pop("error") or None
    if error:
        message = str(error.get("message", ""))
        error = {"type": str(error.get("type", "")), "message": message[:ROW_MESSAGE]}
    row.update(status=row["status"].value, error=error)
    for key in ("created_at", "updated_at", "started_at", "finished_at", "next_attempt_at"):
        row[key] = _iso(row[key])
    return row


def _match(q: str) -> ColumnElement[bool]:
    term = q.strip().lower()
    clauses: list[ColumnElement[bool]] = [func.lower(Job.filename).contains(term, autoescape=True)]
    if _HEX.fullmatch(term):
        clauses += [Job.sha256.startswith(term, autoescape=True), Job.id.startswith(term, autoescape=True)]
    return or_(*clauses)


def _newest_first(query: Select[Any], cursor: str | None) -> Select[Any]:
    if cursor is not None:
        created, job_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    return query.order_by(Job.created_at.desc(), Job.id.desc())


def _cursor(row: dict[str, Any]) -> str:
    """The cursor GET /jobs gives out (``chute.jobs.encode_cursor``), from a row already rendered."""
    raw = f"{row['created_at']}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted or not); None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Board:
    """The page's queries over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def window(self, f: Filter, limit: int = 50, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of list rows, newest first, and the cursor of the next page (None on the last).
        Raises ValueError for a cursor this API did not give out."""
        conditions: list[ColumnElement[bool]] = []
        if f.status is not None:
            conditions.append(Job.status == f.status)
        if f.handler is not None:
            conditions.append(Job.handler == f.handler)
        if f.q and f.q.strip():
            depth = _newest_first(select(Job.id).where(*conditions), cursor).limit(SEARCH_DEPTH).subquery()
            query = _newest_first(select(*ROW_COLUMNS).where(Job.id.in_(select(depth.c.id)), _match(f.q)), None)
        else:
            query = _newest_first(select(*ROW_COLUMNS).where(*conditions), cursor)
        with self.db.read() as session:
            rows = [_row(r) for r in session.execute(query.limit(limit + 1))]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, _cursor(rows[-1]) if more else None

    def counts(self, handler: str | None = None) -> dict[str, int]:
        """Jobs per status (every status present, zeros included) and ``all``, for one handler or all."""
        query = select(Job.status, func.count()).group_by(Job.status)
        if handler is not None:
            query = query.where(Job.handler == handler)
        with self.db.read() as session:
            found = {status.value: int(n) for status, n in session.execute(query)}
        counts = {s.value: found.get(s.value, 0) for s in JobStatus}
        counts["all"] = sum(found.values())
        return counts

    def counts_by_handler(self) -> dict[str, dict[str, int]]:
        """Jobs per handler and status (the handlers page)."""
        query = select(Job.handler, Job.status, func.count()).group_by(Job.handler, Job.status)
        out: dict[str, dict[str, int]] = defaultdict(dict)
        with self.db.read() as session:
            for name, status, n in session.execute(query):
                out[name][status.value] = int(n)
        return dict(out)

    def last_hour(self, handler: str | None = None, now: datetime | None = None) -> dict[str, Any]:
        """Jobs finished per minute (processed and failed, all handlers and per handler) and each
        handler's attempt duration p50/p95 over the last hour, from one bounded query."""
        now = now or utcnow()
        since = now - timedelta(minutes=WINDOW_MINUTES)
        recent = (select(Attempt.job_id, Attempt.started_at, Attempt.finished_at, Attempt.outcome)
                  .order_by(Attempt.id.desc()).limit(ATTEMPT_DEPTH).subquery())
        query = (select(recent.c.job_id, recent.c.started_at, recent.c.finished_at, recent.c.outcome,
                        Job.handler, Job.status, Job.finished_at)
                 .join(Job, Job.id == recent.c.job_id).where(recent.c.finished_at >= since))
        if handler is not None:
            query = query.where(Job.handler == handler)
        with self.db.read() as session:
            rows = session.execute(query).all()
        return summarize(rows, since, now, truncated=len(rows) >= ATTEMPT_DEPTH)


def _empty_minutes() -> list[dict[str, int]]:
    return [{"processed": 0, "failed": 0} for _ in range(WINDOW_MINUTES)]


def summarize(rows: Sequence[Sequence[Any]], since: datetime, now: datetime, truncated: bool = False) -> dict[str, Any]:
    """The chart's numbers from (job id, attempt start, attempt end, outcome, handler, job status, job end)."""
    finished: dict[str, list[dict[str, int]]] = {"all": _empty_minutes()}
    durations: dict[str, list[float]] = defaultdict(list)
    counted: set[str] = set()
    for job_id, started, ended, outcome, name, status, job_end in rows:
        if outcome is not None and outcome not in NOT_TIMED and ended is not None:
            durations[name].append(max(0.0, (ended - started).total_seconds()))
        if job_id in counted or job_end is None or job_end < since or job_end > now:
            continue
        if status not in (JobStatus.PROCESSED, JobStatus.FAILED):
            continue
        counted.add(job_id)
        minute = min(WINDOW_MINUTES - 1, int((job_end - since).total_seconds() // 60))
        for key in ("all", name):
            finished.setdefault(key, _empty_minutes())[minute][status.value] += 1
    timing = {name: {"runs": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95)}
              for name, values in sorted(durations.items())}
    return {"since": since.isoformat(), "until": now.isoformat(), "minutes": WINDOW_MINUTES,
            "finished": finished, "durations": timing, "truncated": truncated}
