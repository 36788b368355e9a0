"""The ``deliveries`` table: one row per email, the single source of truth for what was sent.

States (``chute.models.DeliveryStatus``)::

    pending ──claim──▶ sending ──250──────────────────▶ sent
       ▲                  │ ├─4xx / unreachable──▶ pending (later, with backoff)
       │                  │ ├─5xx, or out of attempts──▶ failed
       │                  │ └─no answer after DATA──▶ uncertain
       └──release/recover─┘

- **Made with the job's outcome.** ``DeliveryHook`` is one of the ``JobService`` hooks: it runs inside
  the transaction that moves a job to ``processed``/``failed`` and inserts a row per recipient, so the
  terminal state and its emails commit together or not at all. An intermediate retry has no event and
  makes no row. The unique key (job, event, recipient, run) makes a second row for the same email
  impossible; ``run`` tells an operator's re-run of a failed job (a new outcome, a new email) from a
  duplicate. The row carries the Message-ID and a snapshot of the job for the templates, so the email
  describes the outcome it announces even if the job is re-run before it goes out.
- **Claimed before talking to the server.** A notifier moves due rows to ``sending`` under its name
  with a lease (``claim_until``), counting an attempt, in one transaction; on PostgreSQL the rows are
  picked with ``FOR UPDATE SKIP LOCKED`` so several notifiers never take the same row, and SQLite's
  ``BEGIN IMMEDIATE`` serialises claims.
- **"DATA started" is committed before DATA goes out** (``Recorder.mark``; the notifier commits it
  while the server answers MAIL FROM), together with the outcome of the message before it: one
  transaction per message. Outcomes (sent, retry, failed, uncertain) are guarded by the claim, so a
  notifier whose claim was taken back cannot overwrite anyone's work (only "sent", the server's own
  word, may replace an "uncertain" that recovery wrote meanwhile).
- **After a crash** (a notifier killed, its lease run out), ``recover`` sorts its ``sending`` rows by
  that mark: without ``data_at`` no DATA command was ever written for the row, so it goes back to
  ``pending`` and is sent again, safely; with it, the row becomes ``uncertain``: the message may be in
  the recipient's mailbox, and sending it again could be a duplicate, so a person decides
  (``requeue``). This is the "killed between sending and recording" case, and it never sends twice.
  The price: a notifier killed between the mark and the server's final answer (the RCPT TO and DATA
  round trips, about a millisecond) leaves that one row ``uncertain`` even if the mail never left, and
  one killed after the answer but before the next commit leaves the mail ``uncertain`` though sent.
- **Durability of those per-message commits** is against a killed process, not a power cut: see
  ``mark_engine``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, create_engine, event, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from chute.addresses import BadAddress, Recipients, normalize_all
from chute.db import CursorStatement, Database, Prepared, make_engine
from chute.errors import ConfigError
from chute.models import Delivery, DeliveryStatus, Job, UTCDateTime, utcnow
from chute.notify.message import message_id_for
from chute.registry import Registry
from chute.retry import RetryPolicy

log = logging.getLogger("chute.notify")
D = DeliveryStatus
DELIVERIES: Table = Delivery.__table__  # type: ignore[assignment]
T = DELIVERIES.c
#: a job's emails as GET /jobs/{id} shows them, read on the cursor (``Prepared``)
_VIEWS = Prepared(lambda: select(T.id, T.event, T.recipient, T.status, T.attempts, T.last_error, T.sent_at,
                                 T.message_id).where(T.job_id == bindparam("b_job_id")).order_by(T.id))
EVENTS = ("processed", "failed")
RESULT_MAX = 8_000
ERROR_MAX = 4_000


@dataclass(frozen=True)
class Outbound:
    """A claimed row: everything the notifier needs to render and send one email."""

    id: int
    job_id: str
    event: str
    recipient: str
    run: int
    attempts: int
    message_id: str
    context: dict[str, Any]

    @property
    def handler(self) -> str | None:
        job = self.context.get("job")
        return job.get("handler") if isinstance(job, dict) else None


@dataclass(frozen=True)
class Outcome:
    """How one claimed row ended: sent, retry (back to pending), failed or uncertain."""

    id: int
    outcome: str
    detail: str | None = None
    attempts: int = 0


# --- making the rows: the job service's hook ----------------------------------------------------------
def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "\n… (cut here; the whole text is on the job)"


def snapshot(job: Job, event: str, public_url: str) -> dict[str, Any]:
    """What the templates see, taken when the event happens (plain JSON: it is stored on the row)."""
    started = job.started_at or job.created_at
    finished = job.finished_at or utcnow()
    result_json = "" if job.result is None else json.dumps(job.result, indent=2, ensure_ascii=False, default=str)
    error = None
    if job.error:
        # The type and the message, never the traceback: it shows the server's paths and code to
        # whoever an upload named. It stays on the job (GET /jobs/{id}) for the operator. The key is
        # kept, empty, so an operator's template written for it still renders.
        error = {"type": str(job.error.get("type") or "Error"),
                 "message": _truncate(str(job.error.get("message") or ""), ERROR_MAX),
                 "traceback": ""}
    return {
        "event": event,
        "public_url": public_url,
        "job": {
            "id": job.id,
            "url": f"{public_url}/jobs/{job.id}",
            "filename": job.filename,
            "content_type": job.content_type,
            "size": job.size,
            "sha256": job.sha256,
            "handler": job.handler,
            "status": job.status.value,
            "attempts": job.attempts,
            "max_attempts": job.max_attempts,
            "created_at": job.created_at.isoformat(),
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "duration_seconds": max(0.0, (finished - started).total_seconds()),
            "result": job.result if len(result_json) <= RESULT_MAX else None,
            "result_json": _truncate(result_json, RESULT_MAX),
            "error": error,
        },
    }


def validated(addresses: Iterable[str], where: str) -> list[str]:
    try:
        return normalize_all(addresses)
    except BadAddress as exc:
        raise ConfigError(f"{where}: {exc}") from None


def merge_recipients(*groups: Iterable[str]) -> list[str]:
    """In order, without repeats (addresses compare case-insensitively)."""
    seen: set[str] = set()
    out = []
    for group in groups:
        for address in group:
            if address.lower() not in seen:
                seen.add(address.lower())
                out.append(address)
    return out


class DeliveryHook:
    """``JobService`` hook: the upload's ``notify``, the handler's ``notify=[...]`` and
    ``CHUTE_NOTIFY_DEFAULT``, one row each, in the job's own terminal transaction.

    Two limits hold here, where every email is born, whoever asked for it:
    - ``domains`` (``CHUTE_NOTIFY_DOMAINS``): the handlers' and the defaults' addresses must fit it at
      start-up (a ConfigError naming them), and an address outside it gets no row (a job uploaded before
      the list was set, re-run after);
    - ``reruns`` (``CHUTE_NOTIFY_RERUNS``): one recipient gets at most that many emails about one job
      and event, the first included; an operator re-running a failing job in a loop changes the job,
      and past the cap mails nobody again (a log line says so; the rows already made stay on the job)."""

    def __init__(self, registry: Registry, *, defaults: Sequence[str], mail_from: str, public_url: str,
                 domains: Sequence[str] = (), reruns: int = 3) -> None:
        self.rules = Recipients(domains=tuple(domains))
        self.by_handler = {spec.name: self._allowed(validated(spec.notify, f"@handler {spec.name!r} notify="),
                                                    f"@handler {spec.name!r} notify=")
                           for spec in registry if spec.notify}
        self.defaults = self._allowed(list(defaults), "invalid setting CHUTE_NOTIFY_DEFAULT")
        self.reruns = reruns
        self.mail_from = mail_from
        self.public_url = public_url.rstrip("/")
        #: called after the transaction commits, so a notifier in this process starts at once
        self.listeners: list[Callable[[], None]] = []

    def _allowed(self, addresses: list[str], where: str) -> list[str]:
        outside = [address for address in addresses if not self.rules.allows(address)]
        if outside:
            raise ConfigError(f"{where}: {outside[0]!r} is outside CHUTE_NOTIFY_DOMAINS "
                              f"({', '.join(self.rules.domains)})")
        return addresses

    def recipients(self, job: Job) -> list[str]:
        return merge_recipients(job.notify or [], self.by_handler.get(job.handler, []), self.defaults)

    def __call__(self, session: Session, job: Job, event_name: str) -> None:
        if event_name not in EVENTS:
            return
        recipients = self.recipients(job)
        if not recipients:
            return
        conn = session.connection()
        mailed: dict[str, int] = {}
        last_run = 0
        for recipient, count, top in conn.execute(
                select(T.recipient, func.count(), func.max(T.run))
                .where(T.job_id == job.id, T.event == event_name).group_by(T.recipient)):
            mailed[recipient.lower()] = mailed.get(recipient.lower(), 0) + int(count)
            last_run = max(last_run, int(top))
        run = last_run + 1
        recipients = [address for address in recipients if self._may_mail(job, event_name, address, mailed, run)]
        if not recipients:
            return
        now = utcnow()
        context = snapshot(job, event_name, self.public_url)
        conn.execute(insert(DELIVERIES), [{
            "job_id": job.id, "event": event_name, "recipient": address, "run": run, "status": D.PENDING,
            "attempts": 0, "message_id": message_id_for(job.id, event_name, address, run, self.mail_from),
            "context": context, "next_attempt_at": now, "created_at": now, "updated_at": now,
        } for address in recipients])
        if self.listeners and not session.info.get("chute_wake"):
            session.info["chute_wake"] = True
            event.listen(session, "after_commit", self._after_commit, once=True)

    def _may_mail(self, job: Job, event_name: str, address: str, mailed: dict[str, int], run: int) -> bool:
        if not self.rules.allows(address):
            log.warning("event=mail-refused job=%s mail=%s to=%s run=%d note=outside CHUTE_NOTIFY_DOMAINS; "
                        "no email", job.id, event_name, address, run)
            return False
        sent = mailed.get(address.lower(), 0)
        if sent >= self.reruns:
            log.warning("event=mail-capped job=%s mail=%s to=%s run=%d mailed=%d note=CHUTE_NOTIFY_RERUNS is "
                        "%d: this re-run mails this recipient no more", job.id, event_name, address, run, sent,
                        self.reruns)
            return False
        return True

    def _after_commit(self, _session: Session) -> None:
        for wake in list(self.listeners):
            wake()


# --- sending them: the notifier's side --------------------------------------------------------------
def _guarded(owner: str) -> Any:
    return (T.claimed_by == owner) & (T.status == D.SENDING)


class DeliveryStore:
    """Every read and write of delivery rows; each method is one transaction."""

    def __init__(self, db: Database, *, attempts: int = 8, backoff: float = 30.0, max_backoff: float = 3600.0,
                 lease: float = 300.0) -> None:
        self.db = db
        self.policy = RetryPolicy(attempts=attempts, backoff=backoff, max_backoff=max_backoff)
        self.lease = lease
        #: the notifier's per-message commits run on connections of their own (``mark_engine``), straight
        #: on the DBAPI (``Recorder``, ``CursorStatement``); ``record`` is the same through Core
        self._engine = mark_engine(db)
        self._writer = self._engine.execution_options(sqlite_begin="IMMEDIATE") if db.is_sqlite else self._engine
        now = bindparam("b_now", type_=UTCDateTime())
        self._mark = (update(DELIVERIES).where(T.id == bindparam("b_id"), _guarded_param())
                      .values(data_at=now, updated_at=now))
        self._sent = (update(DELIVERIES)
                      .where(T.id == bindparam("b_id"),
                             or_(_guarded_param(), T.status == D.UNCERTAIN))
                      .values(status=D.SENT, sent_at=now, last_error=None, claimed_by=None, claim_until=None,
                              updated_at=now))
        self._other = (update(DELIVERIES)
                       .where(T.id == bindparam("b_id"), _guarded_param())
                       .values(status=bindparam("b_status", type_=T.status.type), last_error=bindparam("b_error"),
                               next_attempt_at=bindparam("b_next", type_=UTCDateTime()), data_at=None,
                               claimed_by=None, claim_until=None, updated_at=now))
        dialect = self._engine.dialect
        self._direct_mark = CursorStatement(self._mark, dialect)
        self._direct_sent = CursorStatement(self._sent, dialect)
        self._direct_other = CursorStatement(self._other, dialect)
        self._direct_renew = CursorStatement(update(DELIVERIES).where(_guarded_param()).values(
            claim_until=bindparam("b_until", type_=UTCDateTime()), updated_at=now), dialect)

    def close(self) -> None:
        if self._engine is not self.db.engine:
            self._engine.dispose()

    # reads
    def get(self, delivery_id: int) -> Delivery | None:
        with self.db.read() as session:
            return session.get(Delivery, delivery_id)

    def views_for_job(self, job_id: str) -> list[dict[str, Any]]:
        """The job's emails as ``GET /jobs/{id}`` shows them, read on the DBAPI cursor (``Prepared``):
        every client's poll reads them, and a Session costs ~30 times the query here."""
        with self.db.engine.connect() as conn:
            return _VIEWS.rows(conn, {"b_job_id": job_id})

    def for_job(self, job_id: str) -> list[Delivery]:
        with self.db.read() as session:
            return list(session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)))

    def counts(self) -> dict[str, int]:
        with self.db.read() as session:
            rows = session.execute(select(T.status, func.count()).group_by(T.status)).all()
        return {str(getattr(status, "value", status)): int(n) for status, n in rows}

    def has_due(self, *, due_only: bool = True) -> bool:
        query = select(T.id).where(T.status == D.PENDING)
        if due_only:
            query = query.where(T.next_attempt_at <= utcnow())
        with self.db.read() as session:
            return session.execute(query.limit(1)).first() is not None

    # the notifier's moves
    def claim(self, owner: str, limit: int, *, due_only: bool = True, before: datetime | None = None) -> list[Outbound]:
        """Up to ``limit`` due rows, now ``sending`` under ``owner``. ``due_only=False`` ignores backoff;
        ``before`` skips rows changed since then (so one pass tries a row at most once)."""
        now = utcnow()
        query = select(T.id).where(T.status == D.PENDING)
        if due_only:
            query = query.where(T.next_attempt_at <= now)
        if before is not None:
            query = query.where(T.updated_at <= before)
        query = query.order_by(T.next_attempt_at, T.id).limit(limit)
        if not self.db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        with self.db.write() as session:
            conn = session.connection()
            ids = list(conn.execute(query).scalars())
            if not ids:
                return []
            conn.execute(update(DELIVERIES).where(T.id.in_(ids), T.status == D.PENDING)
                         .values(status=D.SENDING, claimed_by=owner, claim_until=now + timedelta(seconds=self.lease),
                                 attempts=T.attempts + 1, data_at=None, updated_at=now))
            rows = conn.execute(select(T.id, T.job_id, T.event, T.recipient, T.run, T.attempts, T.message_id,
                                       T.context).where(T.id.in_(ids), T.claimed_by == owner)
                                .order_by(T.next_attempt_at, T.id)).all()
        return [Outbound(*row) for row in rows]

    def record(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        """The outcomes the server already gave, when a pass is cut off outside a ``Recorder``."""
        if outcomes:
            with self._writer.begin() as conn:
                self._apply(conn, owner, outcomes, utcnow())

    def recorder(self, owner: str) -> Recorder:
        """A connection held for a notifier's pass, for its per-message commits."""
        return Recorder(self, owner)

    def release(self, owner: str, ids: Sequence[int], error: str | None = None) -> None:
        """Claimed but never tried (the server was unreachable, or we are stopping): pending again,
        due now, and the attempt given back."""
        if ids:
            with self.db.write() as session:
                session.execute(update(DELIVERIES).where(T.id.in_(ids), _guarded(owner))
                                .values(status=D.PENDING, attempts=T.attempts - 1, claimed_by=None,
                                        claim_until=None, data_at=None, updated_at=utcnow(),
                                        last_error=error if error is not None else T.last_error))

    def recover(self) -> tuple[int, int]:
        """Rows whose notifier stopped answering: (sent again, marked uncertain). Safe to run anywhere,
        any time: it only touches claims whose lease has run out."""
        now = utcnow()
        expired = (T.status == D.SENDING) & (T.claim_until < now)
        with self.db.read() as session:
            if session.execute(select(T.id).where(expired).limit(1)).first() is None:
                return 0, 0
        with self.db.write() as session:
            conn = session.connection()
            uncertain = conn.execute(update(DELIVERIES).where(expired, T.data_at.is_not(None)).values(
                status=D.UNCERTAIN, claimed_by=None, claim_until=None, updated_at=now,
                last_error="the notifier sending it stopped after the DATA command went out; the server may "
                           "have the mail, so it is not sent again on its own")).rowcount
            gave_up = conn.execute(update(DELIVERIES).where(expired, T.data_at.is_(None),
                                                            T.attempts >= self.policy.attempts).values(
                status=D.FAILED, claimed_by=None, claim_until=None, updated_at=now,
                last_error=f"gave up after {self.policy.attempts} attempts; the last notifier to try stopped "
                           "before sending")).rowcount
            again = conn.execute(update(DELIVERIES).where(expired, T.data_at.is_(None)).values(
                status=D.PENDING, next_attempt_at=now, claimed_by=None, claim_until=None, updated_at=now,
                last_error="the notifier sending it stopped before the message data went out; sending it "
                           "again")).rowcount
        if uncertain or again or gave_up:
            log.warning("event=mail-recovered resent=%d uncertain=%d failed=%d note=a notifier stopped "
                        "mid-batch", again, uncertain, gave_up)
        return again, uncertain

    def requeue(self, ids: Sequence[int]) -> int:
        """An operator's call: send ``uncertain`` or ``failed`` emails again (same Message-ID)."""
        now = utcnow()
        with self.db.write() as session:
            return int(session.connection().execute(
                update(DELIVERIES).where(T.id.in_(ids), T.status.in_([D.UNCERTAIN, D.FAILED]))
                .values(status=D.PENDING, next_attempt_at=now, attempts=0, data_at=None, updated_at=now)).rowcount)

    # helpers
    def _apply(self, conn: Any, owner: str, outcomes: Sequence[Outcome], now: Any) -> None:
        sent = [{"b_id": o.id, "b_owner": owner, "b_now": now} for o in outcomes if o.outcome == "sent"]
        other = [self._params(o, owner, now) for o in outcomes if o.outcome != "sent"]
        if sent:
            conn.execute(self._sent, sent[0] if len(sent) == 1 else sent)
        if other:
            conn.execute(self._other, other[0] if len(other) == 1 else other)

    def _params(self, o: Outcome, owner: str, now: Any) -> dict[str, Any]:
        status, detail, next_at = D.FAILED, o.detail, None
        if o.outcome == "uncertain":
            status = D.UNCERTAIN
        elif o.outcome == "retry":
            if o.attempts >= self.policy.attempts:
                detail = f"{detail} (gave up after {o.attempts} attempts)"
            else:
                status = D.PENDING
                next_at = now + timedelta(seconds=self.policy.delay(max(1, o.attempts)))
        elif o.outcome != "failed":
            raise ValueError(f"unknown outcome {o.outcome!r}")
        return {"b_id": o.id, "b_owner": owner, "b_now": now, "b_status": status,
                "b_error": (detail or "")[:4000] or None, "b_next": next_at}


class Recorder:
    """The notifier's per-message commits, on one DBAPI connection held for a pass: no pool round trip
    and no ORM or Core bookkeeping per message (see ``CursorStatement``). Each call is one committed
    transaction; ``mark`` is committed before it returns."""

    def __init__(self, store: DeliveryStore, owner: str) -> None:
        self.store, self.owner = store, owner
        self._raw: Any = None

    def __enter__(self) -> Recorder:
        self._raw = self.store._engine.raw_connection()
        return self

    def __exit__(self, *exc: object) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        cursor = self._raw.cursor()
        try:
            if self.store.db.is_sqlite:
                cursor.execute("BEGIN IMMEDIATE")  # as Database.write does: no lock upgrade, no deadlock
            yield cursor
            self._raw.commit()
        except BaseException:
            self._raw.rollback()
            raise
        finally:
            cursor.close()

    def mark(self, delivery_id: int, outcomes: Sequence[Outcome] = (), *, renew: bool = False) -> bool:
        """Record ``outcomes`` and mark ``delivery_id`` "DATA started", in one transaction; False if the
        row is no longer ours (our claim ran out and another notifier recovered it): then it must not
        be sent."""
        now = utcnow()
        store = self.store
        with self._transaction() as cursor:
            self._apply(cursor, outcomes, now)
            marked = store._direct_mark.run(cursor, [{"b_id": delivery_id, "b_owner": self.owner, "b_now": now}])
            if renew:
                store._direct_renew.run(cursor, [{"b_owner": self.owner, "b_now": now,
                                                  "b_until": now + timedelta(seconds=store.lease)}])
        return bool(marked == 1)

    def record(self, outcomes: Sequence[Outcome]) -> None:
        if outcomes:
            with self._transaction() as cursor:
                self._apply(cursor, outcomes, utcnow())

    def _apply(self, cursor: Any, outcomes: Sequence[Outcome], now: datetime) -> None:
        store = self.store
        sent = [{"b_id": o.id, "b_owner": self.owner, "b_now": now} for o in outcomes if o.outcome == "sent"]
        other = [store._params(o, self.owner, now) for o in outcomes if o.outcome != "sent"]
        if sent:
            store._direct_sent.run(cursor, sent)
        if other:
            store._direct_other.run(cursor, other)


def mark_engine(db: Database) -> Engine:
    """Connections for the notifier's per-message commits ("DATA started", outcomes), made durable
    against a killed process but not fsynced one by one: SQLite ``synchronous=NORMAL`` (WAL: the commit is
    in the WAL file the moment it returns; the next checkpoint or FULL commit by anyone syncs it),
    PostgreSQL ``synchronous_commit=off`` (the server has it at once and flushes within a fraction of a
    second). A notifier killed at any point loses nothing it committed. Only a power cut (or a crash of
    the database server) in the instant after a commit could lose the last marks, and then at worst the
    few messages they covered are sent again. The job tables keep their own fully synced connections."""
    url = db.engine.url
    if db.is_sqlite:
        if url.database in (None, "", ":memory:"):
            return db.engine  # one in-memory database: there is no second connection to it
        engine = make_engine(url.render_as_string(hide_password=False))

        @event.listens_for(engine, "connect")
        def _normal(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        # and transactions begun through SQLAlchemy keep it (db.py sets the level per transaction)
        return engine.execution_options(sqlite_sync="NORMAL")
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4,
                         connect_args={"options": "-c synchronous_commit=off"})


def _guarded_param() -> Any:
    return (T.claimed_by == bindparam("b_owner")) & (T.status == D.SENDING)
