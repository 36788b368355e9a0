"""The tables: a job per accepted upload, a row per attempt, and a row per email to send, so every step
is on record."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chute.status import JobStatus

__all__ = ["Attempt", "Base", "Delivery", "DeliveryStatus", "Job", "JobStatus", "UTCDateTime", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: SQLite has no time zones and comparisons must agree."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


def status_column(kind: type[enum.Enum], name: str) -> Enum:
    """A str enum stored as its values in a short VARCHAR (no native ENUM type to migrate)."""
    return Enum(kind, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e],
                validate_strings=True, name=name)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[JobStatus] = mapped_column(status_column(JobStatus, "job_status"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    #: what the client said and what the extension says, beside what the bytes say
    type_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(255))
    handler: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    notify: Mapped[list[str]] = mapped_column(JSON, default=list)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    #: when the job is next due to a worker: its message published (RabbitMQ) or its row fetched (the
    #: database as the queue); NULL while it runs or once it has ended. See ``jobs.py``.
    dispatch_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    #: an operator's cancel of the running attempt: ``finish`` or ``kill`` (``lifecycle.CancelRequest``);
    #: the job ends ``cancelled`` when the attempt does. NULL for every job nobody cancelled while it ran.
    cancel_requested: Mapped[str | None] = mapped_column(String(8))

    __table_args__ = (
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_handler_created", "handler", "created_at"),
        Index("ix_jobs_dispatch_at", "dispatch_at"),
        Index("ix_jobs_lease", "status", "lease_expires_at"),
    )


class Attempt(Base):
    """One run of a handler on a job: the timestamps the backoff is measured from, and how it ended."""

    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    #: processed, error, rejected, timeout, crashed, lost (the worker died), interrupted (handed back)
    outcome: Mapped[str | None] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)


class DeliveryStatus(str, enum.Enum):
    """Where one email stands; ``chute.notify.deliveries`` has the moves and ``notifier`` makes them."""

    #: waiting to be sent at ``next_attempt_at`` (new, or back after a temporary failure)
    PENDING = "pending"
    #: a notifier holds it until ``claim_until``; ``data_at`` is set before its DATA command goes out
    SENDING = "sending"
    #: the server answered 250 to the message data; ``sent_at`` says when
    SENT = "sent"
    #: the data went out but no answer came back: the server may have the mail, so it is not resent
    #: blindly (an operator can re-queue it)
    UNCERTAIN = "uncertain"
    #: refused for good (a 5xx answer), or out of attempts; ``last_error`` says why
    FAILED = "failed"


class Delivery(Base):
    """One email: a (job, event, recipient) of one run of the job, with its state and a stable Message-ID.

    The row is inserted in the same transaction that moves the job to ``processed`` or ``failed``, so a
    terminal job and its notifications commit together; the unique key means one email each."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    #: processed | failed
    event: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(320))
    #: 1 for the job's first outcome, 2 after an operator re-runs it and it ends again, …
    run: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[DeliveryStatus] = mapped_column(status_column(DeliveryStatus, "delivery_status"))
    #: tries so far (counted when a notifier claims the row; given back when it never got to send)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(255))
    #: what the templates are rendered from: the job as it was when the event happened
    context: Mapped[dict[str, Any]] = mapped_column(JSON)
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_until: Mapped[datetime | None]
    #: committed before the DATA command goes out (while the server answers MAIL FROM): from then on
    #: the server may have the mail, and a crash leaves the row ``uncertain`` rather than resent
    data_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("job_id", "event", "recipient", "run", name="uq_deliveries_once"),
        #: due rows (pending, by next_attempt_at) and, by its first column, the few ``sending`` ones
        #: that recovery looks at; every other lookup goes by job (the unique key starts with job_id)
        Index("ix_deliveries_due", "status", "next_attempt_at"),
    )
