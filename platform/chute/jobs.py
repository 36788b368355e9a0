"""Every read and write of job rows: the lifecycle's decisions, made durable in batches."""

from __future__ import annotations

import base64
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from chute import lifecycle
from chute.db import Database, Direct
from chute.errors import InvalidTransition, JobNotFound
from chute.lifecycle import Claim
from chute.models import Attempt, Job, JobStatus, utcnow
from chute.registry import Registry
from chute.transitions import Claimed as Claimed  # re-exported: the worker's vocabulary
from chute.transitions import Delivery as Delivery
from chute.transitions import Finished as Finished
from chute.transitions import Recorded as Recorded
from chute.transitions import take_turn

log = logging.getLogger("chute.jobs")
S = JobStatus
JOBS: Table = Job.__table__  # type: ignore[assignment]
_COLUMNS = [c.name for c in JOBS.c]
_INSERT: dict[str, Direct] = {}  # per dialect, compiled once
#: a job to publish and the ``dispatch_at`` it was due at (the token that marks it sent)
Due = tuple[str, datetime]
#: called inside the transaction that moves a job to a terminal state: (session, job, event)
TransitionHook = Callable[[Session, Job, str], None]


def new_job_id() -> str:
    """Time-ordered (48-bit milliseconds, then 80 random bits): new rows land at the end of the index."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def _locked(db: Database, query: Select[Any]) -> Select[Any]:
    return query if db.is_sqlite else query.with_for_update()


def _logfmt(**fields: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)


class JobStore:
    """The job table's operations; each public method is one committed transaction."""

    def __init__(self, db: Database, hooks: Sequence[TransitionHook] = ()) -> None:
        self.db = db
        self.hooks = list(hooks)

    # --- the API side -------------------------------------------------------------------------
    def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        """One durable transaction for many uploads, straight on the DBAPI cursor (``Direct``): on the
        upload path SQLAlchemy's per-execution bookkeeping would cost more than SQLite's own work."""
        if not rows:
            return
        with self.db.writer.begin() as conn:
            direct = _INSERT.get(conn.dialect.name)
            if direct is None:
                direct = _INSERT[conn.dialect.name] = Direct(
                    insert(JOBS).values({c.name: bindparam(f"b_{c.name}") for c in JOBS.c}), conn.dialect)
            cursor = conn.connection.cursor()
            try:
                direct.run(cursor, [{f"b_{name}": row.get(name) for name in _COLUMNS} for row in rows])
            finally:
                cursor.close()

    def get(self, job_id: str) -> Job:
        with self.db.read() as session:
            job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def attempts(self, job_id: str) -> list[Attempt]:
        with self.db.read() as session:
            return list(session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)))

    def list_jobs(self, status: JobStatus | None = None, handler: str | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[Job], str | None]:
        """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat."""
        query = select(Job)
        if status is not None:
            query = query.where(Job.status == status)
        if handler is not None:
            query = query.where(Job.handler == handler)
        if cursor is not None:
            created, job_id = decode_cursor(cursor)
            query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        with self.db.read() as session:
            jobs = list(session.scalars(query))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, encode_cursor(jobs[-1]) if more else None

    def mark_dispatched(self, due: Sequence[Due]) -> None:
        """The broker has these messages: the relay need not send them again. A row whose
        ``dispatch_at`` has moved on since (a retry scheduled meanwhile) keeps its new one."""
        if due:
            statement = (update(JOBS).where(JOBS.c.id == bindparam("job_id"), JOBS.c.dispatch_at == bindparam("due_at"))
                         .values(dispatch_at=None))
            with self.db.write() as session:
                session.connection().execute(statement, [{"job_id": j, "due_at": d} for j, d in due])

    def retry_failed(self, job_id: str, policy_attempts: int | None = None) -> Job:
        """An operator re-runs a failed job: attempts start again from zero."""
        now = utcnow()
        with self.db.write() as session:
            job = session.scalars(_locked(self.db, select(Job).where(Job.id == job_id))).first()
            if job is None:
                raise JobNotFound(job_id)
            if job.status is not S.FAILED:
                raise InvalidTransition(f"only a failed job can be re-run; this one is {job.status.value}")
            lifecycle.check(job.status, S.PENDING)
            job.status, job.attempts, job.error, job.result = S.PENDING, 0, None, None
            job.max_attempts = policy_attempts or job.max_attempts
            job.finished_at = job.next_attempt_at = job.lease_owner = job.lease_expires_at = None
            job.updated_at = job.dispatch_at = now
        log.info(_logfmt(event="rerun", job=job_id, handler=job.handler, status="pending"))
        return cast(Job, job)

    # --- the worker side ----------------------------------------------------------------------
    def claim(self, deliveries: Sequence[Delivery], worker: str, lease: float) -> list[Claimed]:
        """Start an attempt for every delivery the lifecycle allows, in one transaction."""
        return self.step([], deliveries, worker, None, lease)[1]

    def record(self, finished: Sequence[Finished], worker: str, registry: Registry) -> list[Recorded]:
        """Store how each attempt ended and move its job on, in one transaction."""
        return self.step(finished, [], worker, registry, 0.0)[0]

    def step(self, finished: Sequence[Finished], deliveries: Sequence[Delivery], worker: str,
             registry: Registry | None, lease: float) -> tuple[list[Recorded], list[Claimed]]:
        """Record finished attempts and claim new deliveries in one transaction: one commit per turn.

        A claim is durable (fsynced): an attempt must never go uncounted. A transaction that only records
        outcomes is not fsynced on SQLite: a power cut may roll it back, leaving the job ``running`` on
        a lease that expires and runs it again, which at-least-once allows."""
        if not finished and not deliveries:
            return [], []
        with self.db.write(durable=bool(deliveries)) as session:
            recorded, claimed = take_turn(session, not self.db.is_sqlite, finished, deliveries, worker, registry,
                                          lease, utcnow(), self.hooks)
        self._log_records(finished, recorded)
        self._log_claims(claimed, worker)
        return recorded, claimed

    def _log_claims(self, claimed: list[Claimed], worker: str) -> None:
        for c in claimed:
            if c.job is None:
                continue
            if c.decision is Claim.RUN:
                log.info(_logfmt(event="start", job=c.job.id, handler=c.job.handler,
                                 attempt=f"{c.job.attempts}/{c.job.max_attempts}", status="running", worker=worker))
            elif c.decision is Claim.EXHAUSTED:
                log.warning(_logfmt(event="lost", job=c.job_id, handler=c.job.handler,
                                    attempt=f"{c.job.attempts}/{c.job.max_attempts}", status="failed"))

    def _log_records(self, finished: Sequence[Finished], recorded: list[Recorded]) -> None:
        for item, rec in zip(finished, recorded, strict=True):
            job, t = rec.job, rec.transition
            if t is None or job is None:
                log.warning(_logfmt(event="stale", job=item.job_id, attempt=item.attempt,
                                    note="the job was taken back by another worker; this outcome is dropped"))
                continue
            error = item.result.error or {}
            log.info(_logfmt(event="attempt", job=job.id, handler=job.handler,
                             attempt=f"{item.attempt}/{job.max_attempts}", outcome=item.result.outcome,
                             status=t.status.value, duration_ms=round(item.result.duration * 1000),
                             retry_in=f"{t.delay:.2f}s" if t.delay is not None else None,
                             error=error.get("type")))

    def hand_back(self, items: Sequence[tuple[str, int]], worker: str) -> None:
        """Shutdown: attempts we could not finish go back to pending, not counted against the job."""
        now = utcnow()
        with self.db.write() as session:
            for job_id, attempt in items:
                job = session.get(Job, job_id)
                if job is None or job.status is not S.RUNNING or job.lease_owner != worker:
                    continue
                lifecycle.check(job.status, S.PENDING)
                job.status, job.attempts = S.PENDING, job.attempts - 1
                job.lease_owner = job.lease_expires_at = None
                job.updated_at = job.dispatch_at = now
                session.execute(update(Attempt).where(Attempt.job_id == job_id, Attempt.number == attempt,
                                                      Attempt.finished_at.is_(None))
                                .values(finished_at=now, outcome="interrupted"))
                log.info(_logfmt(event="handed-back", job=job_id, attempt=attempt, status="pending"))

    def heartbeat(self, job_ids: Sequence[str], worker: str, lease: float) -> None:
        if job_ids:
            with self.db.write() as session:
                session.execute(update(Job).where(Job.id.in_(job_ids), Job.lease_owner == worker,
                                                  Job.status == S.RUNNING)
                                .values(lease_expires_at=utcnow() + timedelta(seconds=lease)))

    def counts(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
        """(handler, status, jobs) and (handler, outcome, attempts): what /metrics reports."""
        with self.db.read() as session:
            jobs = session.execute(select(Job.handler, Job.status, func.count()).group_by(Job.handler, Job.status))
            by_status = [(h, s.value, n) for h, s, n in jobs]
            attempts = session.execute(select(Job.handler, Attempt.outcome, func.count())
                                       .join(Job, Job.id == Attempt.job_id)
                                       .where(Attempt.outcome.is_not(None))
                                       .group_by(Job.handler, Attempt.outcome))
            return by_status, [(h, o, n) for h, o, n in attempts if o is not None]

    # --- the relay side -----------------------------------------------------------------------
    def due(self, limit: int, lease: float) -> list[Due]:
        """Jobs to (re)publish now: never published, retry due, or running on an expired lease."""
        now = utcnow()
        with self.db.write() as session:
            expired = session.execute(
                update(Job).where(Job.status == S.RUNNING, Job.lease_expires_at <= now)
                .values(lease_owner=None, lease_expires_at=now + timedelta(seconds=lease), dispatch_at=now)
                .returning(Job.id)).scalars().all()
            for job_id in expired:
                log.warning(_logfmt(event="lease-expired", job=job_id, note="its worker stopped answering; "
                                    "sending it again"))
            rows = session.execute(select(Job.id, Job.dispatch_at).where(Job.dispatch_at <= now)
                                   .order_by(Job.dispatch_at).limit(limit))
            return [(job_id, dispatch_at) for job_id, dispatch_at in rows if dispatch_at is not None]

    def resend_stranded(self, queued: Callable[[], set[str]]) -> list[str]:
        """Queued jobs whose message is gone (the embedded broker after a power cut) are sent again.

        ``queued`` lists the jobs the broker holds; it is called after the database is read, so a
        message published in between is seen, and the guarded update skips any job that moved on."""
        waiting = [S.PENDING, S.RETRYING]
        with self.db.read() as session:
            candidates = set(session.scalars(select(Job.id).where(Job.status.in_(waiting), Job.dispatch_at.is_(None))))
        lost = sorted(candidates - queued())
        if lost:
            with self.db.write() as session:
                session.execute(update(Job).where(Job.id.in_(lost), Job.status.in_(waiting), Job.dispatch_at.is_(None))
                                .values(dispatch_at=utcnow()))
            log.warning(_logfmt(event="resend", jobs=len(lost), note="their messages were missing from the broker"))
        return lost

    # --- helpers ------------------------------------------------------------------------------



def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the cursor is not one this API gave out") from None


def worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
