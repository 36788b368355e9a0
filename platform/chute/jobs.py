"""The job service: every read and write of job rows, the lifecycle's decisions made durable.

``dispatch_at`` is the queue. A job is due to a worker when its ``dispatch_at`` has come: at once for
an upload on the database source, after the publish grace on RabbitMQ (the API publishes at once; the
relay publishes only what that missed), at ``next_attempt_at`` for a retry, and at once when the relay
finds a lease expired. Starting an attempt clears it; so does an outcome, but for a retry's time. On
RabbitMQ a published job keeps a re-check time, so a message lost in the broker is published again.
On the database source a fetched row is reserved by pushing it forward, so two workers never claim
the same one and a worker that dies between fetch and claim only delays it."""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from chute import lifecycle
from chute.db import CursorStatement, Database, Prepared
from chute.errors import InvalidTransition, JobNotFound
from chute.lifecycle import Cancel, CancelRequest, Claim, JobState
from chute.models import Attempt, Job, JobStatus, utcnow
from chute.registry import Registry
from chute.sources import JobMessage
from chute.status import Outcome
from chute.turns import Claimed, Finished, Recorded, record_and_claim

log = logging.getLogger("chute.jobs")
S = JobStatus
JOBS: Table = Job.__table__  # type: ignore[assignment]
_COLUMNS = [c.name for c in JOBS.c]
_INSERT: dict[str, CursorStatement] = {}  # per dialect, compiled once
#: the reads every poll, fetch and idle wait makes, straight on the cursor (``Prepared``)
_VIEW = Prepared(lambda: select(*JOBS.c).where(JOBS.c.id == bindparam("b_id")))
_ANY_DUE = Prepared(lambda: select(JOBS.c.id).where(JOBS.c.dispatch_at <= bindparam("b_now")).limit(1))
_NEXT_DUE = Prepared(lambda: select(func.min(JOBS.c.dispatch_at).label("due")))
_RESERVE_SKIP_LOCKED = Prepared(lambda: _reserve(skip_locked=True))
_RESERVE_SQLITE = Prepared(lambda: _reserve(skip_locked=False))
#: a job to publish and the ``dispatch_at`` it was due at (the token that marks it published)
Due = tuple[str, datetime]
#: called inside the transaction that moves a job to a terminal state: (session, job, event)
TransitionHook = Callable[[Session, Job, str], None]
Clock = Callable[[], datetime]
#: jobs a bulk re-run or cancel changes per transaction: each one holds SQLite's write lock for a few
#: milliseconds, not the whole table's worth
BULK_BATCH = 500
_HEX = re.compile(r"[0-9a-f]{6,64}")
__all__ = ["BULK_BATCH", "Claimed", "Clock", "Due", "Finished", "JobService", "Recorded", "TransitionHook",
           "new_job_id", "search"]


def new_job_id() -> str:
    """Time-ordered (48-bit milliseconds, then 80 random bits): new rows land at the end of the index."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def _locked(db: Database, query: Select[Any]) -> Select[Any]:
    return query if db.is_sqlite else query.with_for_update()


def _logfmt(**fields: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)


def _reserve(skip_locked: bool) -> Any:
    """Move the ``b_limit`` earliest due jobs' ``dispatch_at`` to ``b_until``, answering their ids."""
    due = (select(JOBS.c.id).where(JOBS.c.dispatch_at <= bindparam("b_now"))
           .order_by(JOBS.c.dispatch_at).limit(bindparam("b_limit")))
    if skip_locked:
        due = due.with_for_update(skip_locked=True)
    return update(JOBS).where(JOBS.c.id.in_(due.scalar_subquery())).values(dispatch_at=bindparam("b_until")) \
        .returning(JOBS.c.id)


def _state(job: Job) -> JobState:
    cancel = job.cancel_requested
    return JobState(job.status, job.attempts, job.max_attempts, job.next_attempt_at, job.lease_expires_at,
                    job.lease_owner, CancelRequest(cancel) if cancel else None)


def search(q: str) -> ColumnElement[bool]:
    """What the ``q`` filter matches: a part of the file name (any case), or, for six hex digits or more,
    the start of the sha256 or of the job id. The name is a substring match: no index serves it, so
    it reads every row the other filters leave."""
    term = q.strip().lower()
    clauses: list[ColumnElement[bool]] = [func.lower(JOBS.c.filename).contains(term, autoescape=True)]
    if _HEX.fullmatch(term):
        clauses += [JOBS.c.sha256.startswith(term, autoescape=True), JOBS.c.id.startswith(term, autoescape=True)]
    return or_(*clauses)


def _id_range(prefix: str) -> list[ColumnElement[bool]]:
    """Ids that start with ``prefix`` (hex) as a range on the primary key, which an index serves (a
    LIKE would not, under PostgreSQL's usual collations): ``3fa`` → ``3fa <= id < 3fb``."""
    prefix = prefix.lower()
    last = prefix[-1]
    upper = prefix[:-1] + ("a" if last == "9" else chr(ord(last) + 1))  # hex order: 9 → a, f → g
    return [JOBS.c.id >= prefix, JOBS.c.id < upper]


def _matching(statuses: Collection[JobStatus] | None, handler: str | None, q: str | None) -> list[ColumnElement[bool]]:
    """The filters the list, the count and the bulk actions share."""
    conditions: list[ColumnElement[bool]] = []
    if statuses:
        conditions.append(JOBS.c.status.in_(list(statuses)))
    if handler is not None:
        conditions.append(JOBS.c.handler == handler)
    if q and q.strip():
        conditions.append(search(q))
    return conditions


class JobService:
    """The job table's operations; each public method is one committed transaction. ``clock`` is the
    time every rule sees (the testing kit moves it on to skip retry delays)."""

    def __init__(self, db: Database, hooks: Sequence[TransitionHook] = (), clock: Clock = utcnow) -> None:
        self.db = db
        self.hooks = list(hooks)
        self.now = clock

    # --- the API side -------------------------------------------------------------------------
    def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        """One durable transaction for many uploads, straight on the DBAPI cursor (``CursorStatement``): on the
        upload path SQLAlchemy's per-execution bookkeeping would cost more than SQLite's own work."""
        if not rows:
            return
        with self.db.writer.begin() as conn:
            direct = _INSERT.get(conn.dialect.name)
            if direct is None:
                direct = _INSERT[conn.dialect.name] = CursorStatement(
                    insert(JOBS).values({c.name: bindparam(f"b_{c.name}") for c in JOBS.c}), conn.dialect)
            cursor = conn.connection.cursor()
            try:
                direct.run(cursor, [{f"b_{name}": row.get(name) for name in _COLUMNS} for row in rows])
            finally:
                cursor.close()

    def view(self, job_id: str) -> SimpleNamespace:
        """The job's columns for ``GET /jobs/{id}``, read on the DBAPI cursor (``Prepared``): the read
        every client polls, so it skips the Session. Its attributes are a ``Job``'s."""
        with self.db.engine.connect() as conn:
            rows = _VIEW.rows(conn, {"b_id": job_id})
        if not rows:
            raise JobNotFound(job_id)
        return SimpleNamespace(**rows[0])

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
                  cursor: str | None = None, *, q: str | None = None, id_prefix: str | None = None,
                  id_suffix: str | None = None) -> tuple[list[Job], str | None]:
        """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat. ``id_prefix``
        goes by the primary key; ``id_suffix`` (the short id ``chute jobs`` shows) reads every id."""
        query = select(Job).where(*_matching([status] if status is not None else None, handler, q))
        if id_prefix:
            query = query.where(*_id_range(id_prefix))
        if id_suffix:
            query = query.where(Job.id.endswith(id_suffix.lower(), autoescape=True))
        if cursor is not None:
            created, job_id = decode_cursor(cursor)
            query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        with self.db.read() as session:
            jobs = list(session.scalars(query))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, encode_cursor(jobs[-1]) if more else None

    def retry_failed(self, job_id: str, policy_attempts: int | None = None) -> Job:
        """An operator re-runs a failed job: attempts start again from zero."""
        now = self.now()
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
            job.cancel_requested = None
            job.updated_at = job.dispatch_at = now
        log.info(_logfmt(event="rerun", job=job_id, handler=job.handler, status="pending"))
        return cast(Job, job)

    def cancel(self, job_id: str, kill: bool = False) -> tuple[Job, Cancel]:
        """An operator cancels a job: ``Cancel.NOW`` (pending or retrying: ``cancelled``, committed, its
        message dropped by whichever worker fetches it) or ``Cancel.MARK`` (running: the request is on
        the row; the attempt's outcome makes it ``cancelled``, and ``kill`` has its worker stop it).
        Raises InvalidTransition for a job that has ended."""
        now = self.now()
        with self.db.write() as session:
            job = session.scalars(_locked(self.db, select(Job).where(Job.id == job_id))).first()
            if job is None:
                raise JobNotFound(job_id)
            decision = lifecycle.cancel(_state(job))
            if decision is Cancel.NOW:
                lifecycle.check(job.status, S.CANCELLED)
                job.status, job.finished_at, job.updated_at = S.CANCELLED, now, now
                job.dispatch_at = job.next_attempt_at = None
            else:
                current = CancelRequest(job.cancel_requested) if job.cancel_requested else None
                job.cancel_requested = lifecycle.cancel_request(current, kill).value
                job.updated_at = now
        log.info(_logfmt(event="cancel", job=job_id, handler=job.handler, status=job.status.value,
                         requested=job.cancel_requested))
        return cast(Job, job), decision

    def count(self, statuses: Collection[JobStatus] | None = None, handler: str | None = None,
              q: str | None = None) -> int:
        """How many jobs the filters match: what a bulk action would touch, asked before it."""
        with self.db.read() as session:
            return int(session.scalar(select(func.count()).select_from(JOBS)
                                      .where(*_matching(statuses, handler, q))) or 0)

    def cancel_many(self, statuses: Collection[JobStatus] = lifecycle.CANCEL_AT_ONCE, handler: str | None = None,
                    q: str | None = None) -> list[tuple[str, str]]:
        """Cancel every pending or retrying job the filters match (running ones are left to ``cancel``),
        ``BULK_BATCH`` per transaction; returns the (id, handler) of each."""
        wanted = [s for s in statuses if s in lifecycle.CANCEL_AT_ONCE]
        if not wanted:
            raise InvalidTransition("only pending or retrying jobs can be cancelled in bulk")
        for status in wanted:
            lifecycle.check(status, S.CANCELLED)

        def values(now: datetime) -> dict[str, Any]:
            return {"status": S.CANCELLED, "finished_at": now, "updated_at": now, "dispatch_at": None,
                    "next_attempt_at": None}

        done = self._in_batches(_matching(wanted, handler, q), wanted, values)
        log.info(_logfmt(event="cancel-many", handler=handler, q=q, count=len(done), status="cancelled"))
        return [(job_id, name) for job_id, name, _ in done]

    def retry_many(self, handler: str | None = None, q: str | None = None,
                   attempts_for: Mapping[str, int] | None = None) -> list[Due]:
        """Re-run every failed job the filters match, as ``retry_failed`` re-runs one (attempts from zero,
        ``attempts_for[handler]`` attempts when the handler is known here), ``BULK_BATCH`` per transaction;
        returns the jobs to hand to the relay."""
        lifecycle.check(S.FAILED, S.PENDING)
        policy = (case(dict(attempts_for), value=JOBS.c.handler, else_=JOBS.c.max_attempts)
                  if attempts_for else JOBS.c.max_attempts)

        def values(now: datetime) -> dict[str, Any]:
            return {"status": S.PENDING, "attempts": 0, "error": null(), "result": null(), "max_attempts": policy,
                    "finished_at": None, "next_attempt_at": None, "lease_owner": None, "lease_expires_at": None,
                    "cancel_requested": None, "updated_at": now, "dispatch_at": now}

        done = self._in_batches(_matching([S.FAILED], handler, q), [S.FAILED], values)
        log.info(_logfmt(event="rerun-many", handler=handler, q=q, count=len(done), status="pending"))
        return [(job_id, at) for job_id, _, at in done if at is not None]  # every one is due now

    def _in_batches(self, conditions: list[ColumnElement[bool]], statuses: list[JobStatus],
                    values: Callable[[datetime], dict[str, Any]]) -> list[tuple[str, str, datetime | None]]:
        """Update the matching rows in id order, ``BULK_BATCH`` per committed transaction. Each batch
        starts after the last id of the one before, so a job that comes back into the filter meanwhile
        (re-run, failed again) is not taken twice, and the loop ends."""
        done: list[tuple[str, str, datetime | None]] = []
        after = ""
        while True:
            now = self.now()
            with self.db.write() as session:
                ids = list(session.scalars(_locked(self.db, select(JOBS.c.id).where(*conditions, JOBS.c.id > after)
                                                   .order_by(JOBS.c.id).limit(BULK_BATCH))))
                if ids:
                    changed = session.execute(update(JOBS).where(JOBS.c.id.in_(ids), JOBS.c.status.in_(statuses))
                                              .values(values(now))
                                              .returning(JOBS.c.id, JOBS.c.handler, JOBS.c.dispatch_at))
                    done += [(job_id, name, at) for job_id, name, at in changed]
            if len(ids) < BULK_BATCH:
                return done
            after = ids[-1]

    # --- the worker side ----------------------------------------------------------------------
    def record_and_claim(self, finished: Sequence[Finished], messages: Sequence[JobMessage], worker: str,
                         registry: Registry | None, lease: float) -> tuple[list[Recorded], list[Claimed]]:
        """Record finished attempts and claim fetched messages in one transaction: one commit per turn.

        A claim is durable (fsynced): an attempt must never go uncounted. A transaction that only records
        outcomes is not fsynced on SQLite: a power cut may roll it back, leaving the job ``running`` on
        a lease that expires and runs it again, which at-least-once allows."""
        if not finished and not messages:
            return [], []
        with self.db.write(durable=bool(messages)) as session:
            recorded, claimed = record_and_claim(session, not self.db.is_sqlite, finished, messages, worker,
                                                 registry, lease, self.now(), self.hooks)
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
            elif c.decision is Claim.SKIP and c.message.redelivered:
                log.info(_logfmt(event="redelivery-skipped", job=c.job_id, status=c.job.status.value,
                                 note="a redelivered message; the job's owner (if running) still renews its lease"))
            elif c.decision is Claim.EXHAUSTED:
                log.warning(_logfmt(event="lost", job=c.job_id, handler=c.job.handler,
                                    attempt=f"{c.job.attempts}/{c.job.max_attempts}", status="failed"))
            elif c.decision is Claim.CANCEL:
                log.info(_logfmt(event="lost", job=c.job_id, handler=c.job.handler, status="cancelled",
                                 note="its worker died after an operator asked to cancel it"))

    def _log_records(self, finished: Sequence[Finished], recorded: list[Recorded]) -> None:
        for item, rec in zip(finished, recorded, strict=True):
            job, t = rec.job, rec.transition
            if t is None or job is None:
                log.warning(_logfmt(event="stale", job=item.job_id, attempt=item.attempt,
                                    note="another worker took the job over; its own attempt decides"))
                continue
            error = item.result.error or {}
            log.info(_logfmt(event="attempt", job=job.id, handler=job.handler,
                             attempt=f"{item.attempt}/{job.max_attempts}", outcome=item.result.outcome.value,
                             status=t.status.value, duration_ms=round(item.result.duration * 1000),
                             retry_in=f"{t.delay:.2f}s" if t.delay is not None else None,
                             error=error.get("type")))

    def hand_back(self, items: Sequence[tuple[str, int]], worker: str) -> None:
        """Shutdown: attempts we could not finish go back to pending, not counted against the job."""
        now = self.now()
        with self.db.write() as session:
            for job_id, attempt in items:
                job = session.get(Job, job_id)
                if job is None or job.status is not S.RUNNING or job.lease_owner != worker:
                    continue
                back = S.CANCELLED if job.cancel_requested else S.PENDING  # an operator's cancel stands
                lifecycle.check(job.status, back)
                job.status, job.attempts = back, job.attempts - 1
                job.lease_owner = job.lease_expires_at = None
                job.updated_at = now
                job.dispatch_at = now if back is S.PENDING else None
                job.finished_at = now if back is S.CANCELLED else None
                session.execute(update(Attempt).where(Attempt.job_id == job_id, Attempt.number == attempt,
                                                      Attempt.finished_at.is_(None))
                                .values(finished_at=now, outcome=Outcome.INTERRUPTED.value))
                log.info(_logfmt(event="handed-back", job=job_id, attempt=attempt, status=back.value))

    def heartbeat(self, job_ids: Sequence[str], worker: str, lease: float) -> dict[str, CancelRequest]:
        """Renew the leases of this worker's running jobs, and answer which of them an operator asked to
        cancel: the same statement, so a worker learns of a cancel at no extra query. Not fsynced on
        SQLite: a renewal lost to a power cut is one the lease makes good."""
        if not job_ids:
            return {}
        with self.db.write(durable=False) as session:
            rows = session.execute(update(JOBS).where(JOBS.c.id.in_(job_ids), JOBS.c.lease_owner == worker,
                                                      JOBS.c.status == S.RUNNING)
                                   .values(lease_expires_at=self.now() + timedelta(seconds=lease))
                                   .returning(JOBS.c.id, JOBS.c.cancel_requested)).all()
        return {job_id: CancelRequest(request) for job_id, request in rows if request}

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

    # --- retention ----------------------------------------------------------------------------
    def finished_before(self, cutoff: datetime, limit: int) -> list[tuple[str, str]]:
        """(id, storage key) of jobs that ended before ``cutoff``, oldest first."""
        with self.db.read() as session:
            rows = session.execute(select(JOBS.c.id, JOBS.c.storage_key)
                                   .where(JOBS.c.status.in_(list(lifecycle.TERMINAL)), JOBS.c.finished_at < cutoff)
                                   .order_by(JOBS.c.finished_at).limit(limit))
            return [(job_id, key) for job_id, key in rows]

    def delete(self, job_ids: Sequence[str]) -> None:
        """Jobs, their attempts and their email rows, in one transaction; a job re-run meanwhile stays."""
        from chute.models import Delivery

        if not job_ids:
            return
        with self.db.write() as session:
            ended = list(session.scalars(_locked(self.db, select(Job.id).where(
                Job.id.in_(job_ids), Job.status.in_(list(lifecycle.TERMINAL))))))
            if ended:
                session.execute(delete(Delivery).where(Delivery.job_id.in_(ended)))
                session.execute(delete(Attempt).where(Attempt.job_id.in_(ended)))
                session.execute(delete(Job).where(Job.id.in_(ended)))

    # --- the database as the queue -----------------------------------------------------------
    def reserve(self, limit: int, visibility: float, probe: bool = True) -> list[Due]:
        """Take up to ``limit`` due jobs off the queue for one worker: their ``dispatch_at`` moves
        ``visibility`` seconds on (the token the worker's claim or requeue goes by). ``SKIP LOCKED`` on
        PostgreSQL and ``BEGIN IMMEDIATE`` on SQLite keep two workers from taking the same row. A read
        comes first (unless ``probe`` is False: the caller was just told of new work), so an idle poll
        takes no write lock. Both run on the DBAPI cursor, compiled once: the embedded queue asks on
        every fetch."""
        now = self.now()
        if probe and not self._any_due(now):
            return []
        until = now + timedelta(seconds=visibility)
        take = _RESERVE_SQLITE if self.db.is_sqlite else _RESERVE_SKIP_LOCKED
        with self.db.relaxed_writer.begin() as conn:
            ids = [row["id"] for row in take.rows(conn, {"b_now": now, "b_limit": limit, "b_until": until})]
        return [(job_id, until) for job_id in ids]

    def _any_due(self, now: datetime) -> bool:
        with self.db.engine.connect() as conn:
            return bool(_ANY_DUE.rows(conn, {"b_now": now}))

    def release(self, reserved: Sequence[Due]) -> None:
        """Reserved jobs that were not claimed are due again at once (unless a claim moved them on)."""
        if reserved:
            now = self.now()
            statement = (update(JOBS).where(JOBS.c.id == bindparam("b_id"), JOBS.c.dispatch_at == bindparam("b_at"))
                         .values(dispatch_at=now))
            with self.db.write(durable=False) as session:
                session.connection().execute(statement, [{"b_id": j, "b_at": at} for j, at in reserved])

    def next_due(self) -> datetime | None:
        """When the next job falls due (now or later), or None when nothing waits."""
        with self.db.engine.connect() as conn:  # on the cursor: an idle embedded queue asks on every fetch
            due: datetime | None = _NEXT_DUE.rows(conn, {})[0]["due"]
        return due

    # --- the relay side -----------------------------------------------------------------------
    def expire_leases(self) -> list[str]:
        """Running jobs whose worker stopped renewing the lease are made due again, so some worker's
        claim takes them over (the claim decides, by ``lifecycle.lease_expired``, which this query mirrors
        in SQL). The owner is left as it is: a worker that was only slow still records its outcome, unless
        another worker has claimed the job by then."""
        now = self.now()
        with self.db.read() as session:
            if session.scalar(select(JOBS.c.id).where(JOBS.c.status == S.RUNNING, JOBS.c.lease_expires_at <= now,
                                                      JOBS.c.dispatch_at.is_(None)).limit(1)) is None:
                return []
        with self.db.write() as session:
            expired = session.execute(
                update(JOBS).where(JOBS.c.status == S.RUNNING, JOBS.c.lease_expires_at <= now,
                                   JOBS.c.dispatch_at.is_(None))
                .values(dispatch_at=now).returning(JOBS.c.id)).scalars().all()
        for job_id in expired:
            log.warning(_logfmt(event="lease-expired", job=job_id, note="its worker stopped renewing the lease; "
                                "it is due again"))
        return list(expired)

    def due(self, limit: int) -> list[Due]:
        """Jobs to publish now (RabbitMQ): never published, a retry due, a lease expired, or published
        long enough ago that the message may be lost."""
        now = self.now()
        with self.db.read() as session:
            rows = session.execute(select(JOBS.c.id, JOBS.c.dispatch_at).where(JOBS.c.dispatch_at <= now)
                                   .order_by(JOBS.c.dispatch_at).limit(limit))
            return [(job_id, dispatch_at) for job_id, dispatch_at in rows]

    def mark_published(self, due: Sequence[Due], grace: float) -> None:
        """The broker has these messages. Each job is looked at again after ``lifecycle.recheck_after``
        (if it has not started by then, its message is published again). A row whose ``dispatch_at``
        moved on meanwhile (a claim, an outcome) keeps what it has."""
        if not due:
            return
        now = self.now()
        with self.db.read() as session:
            ages = dict(session.execute(select(JOBS.c.id, JOBS.c.updated_at)
                                        .where(JOBS.c.id.in_([job_id for job_id, _ in due]))).all())
        params = [{"b_id": job_id, "b_at": at, "b_next": now + timedelta(seconds=lifecycle.recheck_after(
                    (now - ages[job_id]).total_seconds(), grace))} for job_id, at in due if job_id in ages]
        statement = (update(JOBS).where(JOBS.c.id == bindparam("b_id"), JOBS.c.dispatch_at == bindparam("b_at"))
                     .values(dispatch_at=bindparam("b_next")))
        with self.db.write(durable=False) as session:
            session.connection().execute(statement, params)


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
