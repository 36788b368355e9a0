"""A worker's turn, made durable: record the attempts that finished and claim the messages that fit,
in one transaction of a few batched statements (Core, not the ORM's unit of work, which costs more
than the work itself for a fast handler). The decisions are lifecycle.py's; this module only reads
the rows, asks the rules, and writes what they said."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chute import lifecycle
from chute.db import CursorStatement, Prepared
from chute.lifecycle import CancelRequest, Claim, JobState, Transition
from chute.models import Attempt, Job
from chute.registry import Registry
from chute.retry import DEFAULT_POLICY
from chute.sources import JobMessage
from chute.status import AttemptResult, JobStatus, Outcome

S = JobStatus
JOBS: Table = Job.__table__  # type: ignore[assignment]
ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]
Hook = Callable[[Session, Job, str], None]

_START = (update(JOBS).where(JOBS.c.id == bindparam("b_id"))
          .values(status=S.RUNNING, attempts=bindparam("b_attempts"), lease_owner=bindparam("b_owner"),
                  lease_expires_at=bindparam("b_lease"), started_at=bindparam("b_started"),
                  updated_at=bindparam("b_now"), next_attempt_at=None, dispatch_at=None))
_MOVE = (update(JOBS).where(JOBS.c.id == bindparam("b_id"))
         .values(status=bindparam("b_status"), result=bindparam("b_result"), error=bindparam("b_error"),
                 next_attempt_at=bindparam("b_next"), dispatch_at=bindparam("b_next"), lease_owner=None,
                 lease_expires_at=None, finished_at=bindparam("b_finished"), updated_at=bindparam("b_now")))
#: a message that starts nothing: the job is due again only when its own schedule says so
_PARK = update(JOBS).where(JOBS.c.id == bindparam("b_id")).values(dispatch_at=bindparam("b_next"))
#: every column a turn reads: all but the ones it never needs (the type evidence, the previous result)
_READ = [c for c in JOBS.c if c.name not in ("type_info", "result")]
_OPEN = insert(ATTEMPTS).values(job_id=bindparam("b_job"), number=bindparam("b_number"),
                                worker=bindparam("b_worker"), started_at=bindparam("b_started"))
_CLOSE = (update(ATTEMPTS).where(ATTEMPTS.c.job_id == bindparam("b_job"), ATTEMPTS.c.number == bindparam("b_number"),
                                 ATTEMPTS.c.finished_at.is_(None))
          .values(finished_at=bindparam("b_now"), outcome=bindparam("b_outcome"), error_type=bindparam("b_type"),
                  error_message=bindparam("b_message")))
_STATEMENTS = (_CLOSE, _MOVE, _PARK, _START, _OPEN)  # in the order a turn runs them
_COMPILED: dict[str, list[CursorStatement]] = {}  # per dialect, compiled once
#: the turn's read, per (locking, number of ids): ids are padded to a power of two (repeating the
#: last) so a handful of compiled statements serve every turn
_READS: dict[tuple[bool, int], Prepared] = {}


def _read_statement(for_update: bool, size: int) -> Any:
    statement = select(*_READ).where(JOBS.c.id.in_([bindparam(f"b_{i}") for i in range(size)]))
    return statement.with_for_update() if for_update else statement


def _read_rows(conn: Connection, ids: list[str], for_update: bool) -> dict[str, dict[str, Any]]:
    """The rows a turn decides on, by id, read on the DBAPI cursor inside the turn's transaction
    (SQLAlchemy's per-execution work on this read cost more than the rest of the worker's turn)."""
    size = 1
    while size < len(ids):
        size *= 2
    read = _READS.get((for_update, size))
    if read is None:
        read = _READS[(for_update, size)] = Prepared(lambda: _read_statement(for_update, size))
    padded = ids + [ids[-1]] * (size - len(ids))
    return {row["id"]: row for row in read.rows(conn, {f"b_{i}": job_id for i, job_id in enumerate(padded)})}


@dataclass(frozen=True)
class Finished:
    job_id: str
    attempt: int
    result: AttemptResult


@dataclass(frozen=True)
class Claimed:
    message: JobMessage
    decision: Claim | None  # None: no such job
    job: Job | None

    @property
    def job_id(self) -> str:
        return self.message.job_id


@dataclass(frozen=True)
class Recorded:
    job_id: str
    transition: Transition | None  # None: stale (another worker has taken the job over)
    job: Job | None


class JobRow:
    """A job row read as attributes (``row.handler``), as a Job would be, without building an ORM object
    for every row of every turn. Read-only; what callers (the worker, hooks) need of a job."""

    __slots__ = ("_row",)

    def __init__(self, row: dict[str, Any]) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        try:
            return self._row[name]
        except KeyError:
            raise AttributeError(name) from None


def state(row: dict[str, Any]) -> JobState:
    cancel = row["cancel_requested"]
    return JobState(row["status"], row["attempts"], row["max_attempts"], row["next_attempt_at"],
                    row["lease_expires_at"], row["lease_owner"], CancelRequest(cancel) if cancel else None)


@dataclass
class TurnWrites:
    """The statements one turn will run, collected first so each kind goes out as one executemany."""

    worker: str
    now: datetime
    starts: list[dict[str, Any]] = field(default_factory=list)
    moves: list[dict[str, Any]] = field(default_factory=list)
    parks: list[dict[str, Any]] = field(default_factory=list)
    closes: list[dict[str, Any]] = field(default_factory=list)
    opened: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    def start(self, row: dict[str, Any], lease: float) -> None:
        row.update(status=S.RUNNING, attempts=row["attempts"] + 1, lease_owner=self.worker,
                   lease_expires_at=self.now + timedelta(seconds=lease), started_at=row["started_at"] or self.now,
                   updated_at=self.now, next_attempt_at=None, dispatch_at=None)
        self.starts.append({"b_id": row["id"], "b_attempts": row["attempts"], "b_owner": self.worker,
                            "b_lease": row["lease_expires_at"], "b_started": row["started_at"], "b_now": self.now})
        self.opened.append({"b_job": row["id"], "b_number": row["attempts"], "b_worker": self.worker,
                            "b_started": self.now})

    def move(self, row: dict[str, Any], status: JobStatus, *, result: Any = None,
             error: dict[str, Any] | None = None, next_attempt_at: datetime | None = None) -> None:
        lifecycle.check(row["status"], status)
        finished = self.now if status in lifecycle.TERMINAL else None
        row.update(status=status, result=result, error=error, next_attempt_at=next_attempt_at,
                   dispatch_at=next_attempt_at, lease_owner=None, lease_expires_at=None, finished_at=finished,
                   updated_at=self.now)
        self.moves.append({"b_id": row["id"], "b_status": status, "b_result": result, "b_error": error,
                           "b_next": next_attempt_at, "b_finished": finished, "b_now": self.now})

    def park(self, row: dict[str, Any]) -> None:
        """Nothing to run: a retry waits for its time, anything else (done, or running on a live lease)
        for nothing. Clears a reservation or a re-publish mark that would otherwise come round again."""
        due = row["next_attempt_at"] if row["status"] is S.RETRYING else None
        if row["dispatch_at"] != due:
            row["dispatch_at"] = due
            self.parks.append({"b_id": row["id"], "b_next": due})

    def close(self, job_id: str, number: int, outcome: Outcome, error: dict[str, Any] | None) -> None:
        error = error or {}
        self.closes.append({"b_job": job_id, "b_number": number, "b_now": self.now, "b_outcome": outcome.value,
                            "b_type": error.get("type"), "b_message": (error.get("message") or "")[:4000] or None})

    def run(self, conn: Connection) -> None:
        """Straight on the DBAPI cursor, inside the session's transaction: per row, SQLAlchemy's execution
        bookkeeping would cost more than SQLite's own work. Attempts close before new ones open (a job
        taken back closes its lost attempt, then starts the next)."""
        compiled = _COMPILED.get(conn.dialect.name)
        if compiled is None:
            compiled = _COMPILED[conn.dialect.name] = [CursorStatement(s, conn.dialect) for s in _STATEMENTS]
        cursor = conn.connection.cursor()
        try:
            batches = (self.closes, self.moves, self.parks, self.starts, self.opened)
            for statement, params in zip(compiled, batches, strict=True):
                if params:
                    statement.run(cursor, params)
        finally:
            cursor.close()


def record_and_claim(session: Session, for_update: bool, finished: Sequence[Finished],
                     messages: Sequence[JobMessage], worker: str, registry: Registry | None, lease: float,
                     now: datetime, hooks: Sequence[Hook]) -> tuple[list[Recorded], list[Claimed]]:
    """One turn in ``session``'s transaction: outcomes first (so a message for a job that just ended
    finds it ended), then claims."""
    conn = session.connection()
    ids = list({f.job_id for f in finished} | {m.job_id for m in messages})
    rows = _read_rows(conn, ids, for_update) if ids else {}
    writes = TurnWrites(worker, now)
    recorded = [_record(writes, rows.get(item.job_id), item, registry) for item in finished]
    claimed = [_claim(writes, rows.get(m.job_id), m, lease) for m in messages]
    writes.run(conn)
    jobs = {job_id: cast(Job, JobRow(row)) for job_id, row in rows.items()}
    for row, event in writes.events:
        for hook in hooks:
            hook(session, jobs[row["id"]], event)
    return ([Recorded(r.job_id, r.transition, jobs.get(r.job_id)) for r in recorded],
            [Claimed(c.message, c.decision, jobs.get(c.job_id)) for c in claimed])


def _record(writes: TurnWrites, row: dict[str, Any] | None, item: Finished, registry: Registry | None) -> Recorded:
    if row is None or row["status"] is not S.RUNNING or row["lease_owner"] != writes.worker \
            or row["attempts"] != item.attempt:
        return Recorded(item.job_id, None, None)
    spec = registry.get(row["handler"]) if registry else None
    transition = lifecycle.after_attempt(state(row), item.result, spec.retry if spec else DEFAULT_POLICY, writes.now)
    writes.close(row["id"], item.attempt, item.result.outcome, item.result.error)
    writes.move(row, transition.status, result=item.result.result if transition.finished else None,
                error=item.result.error, next_attempt_at=transition.next_attempt_at)
    if transition.event:
        writes.events.append((row, transition.event))
    return Recorded(item.job_id, transition, None)


def _claim(writes: TurnWrites, row: dict[str, Any] | None, message: JobMessage, lease: float) -> Claimed:
    if row is None:
        return Claimed(message, None, None)
    decision = lifecycle.claim(state(row), writes.now)
    if decision is not Claim.SKIP and row["status"] is S.RUNNING:
        writes.close(row["id"], row["attempts"], Outcome.LOST, lifecycle.lost_attempt_error(row["attempts"]))
    if decision is Claim.RUN:
        lifecycle.check(row["status"], S.RUNNING)
        writes.start(row, lease)
    elif decision is Claim.EXHAUSTED:
        writes.move(row, S.FAILED, error=lifecycle.lost_attempt_error(row["attempts"]))
        writes.events.append((row, "failed"))
    elif decision is Claim.CANCEL:  # marked for cancel, its worker gone: cancelled as asked, nobody mailed
        writes.move(row, S.CANCELLED, error=lifecycle.lost_attempt_error(row["attempts"]))
    else:
        writes.park(row)
    return Claimed(message, decision, None)
