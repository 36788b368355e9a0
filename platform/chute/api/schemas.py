"""What the API returns, as pydantic models: the OpenAPI page at /docs documents them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from chute.lifecycle import CANCEL_AT_ONCE
from chute.models import Job, JobStatus


class JobError(BaseModel):
    type: str
    message: str
    traceback: str = ""


class NotificationOut(BaseModel):
    """One email about a job: sent, waiting (pending/sending), uncertain (may have arrived) or failed."""

    id: int
    event: str
    recipient: str
    status: str
    attempts: int
    last_error: str | None
    sent_at: datetime | None
    message_id: str


class JobOut(BaseModel):
    id: str
    status: JobStatus
    filename: str
    content_type: str
    type_info: dict[str, Any]
    size: int
    sha256: str
    handler: str
    attempts: int
    max_attempts: int
    notify: list[str]
    result: Any = None
    error: JobError | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    #: an operator's cancel of the running attempt: ``finish`` (the job ends ``cancelled`` when the attempt
    #: does) or ``kill`` (its worker stops the attempt); null when nobody cancelled it while it ran
    cancel_requested: Literal["finish", "kill"] | None = None
    #: the emails about this job (only on GET /jobs/{id})
    notifications: list[NotificationOut] | None = None
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job, base: str, artifacts: list[str] | None = None) -> JobOut:
        links = {"self": f"{base}/jobs/{job.id}", "file": f"{base}/jobs/{job.id}/file"}
        if job.status is JobStatus.FAILED:
            links["retry"] = f"{base}/jobs/{job.id}/retry"
        if job.status in CANCEL_AT_ONCE or job.status is JobStatus.RUNNING:
            links["cancel"] = f"{base}/jobs/{job.id}/cancel"
        for name in artifacts or []:
            links[f"artifact:{name}"] = f"{base}/jobs/{job.id}/artifacts/{name}"
        # Built without validation (``model_construct``): every value comes from a row the database
        # holds in these types; validating them again cost more than the rest of a GET.
        return cls.model_construct(
            id=job.id, status=job.status, filename=job.filename, content_type=job.content_type,
            type_info=job.type_info or {}, size=job.size, sha256=job.sha256, handler=job.handler,
            attempts=job.attempts, max_attempts=job.max_attempts, notify=job.notify or [],
            result=job.result, error=JobError.model_construct(**job.error) if job.error else None,
            created_at=job.created_at, updated_at=job.updated_at, started_at=job.started_at,
            finished_at=job.finished_at, next_attempt_at=job.next_attempt_at,
            cancel_requested=job.cancel_requested,  # type: ignore[arg-type]  # the column holds only these
            links=links,
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class Count(BaseModel):
    """How many jobs matched (GET /jobs/count), or were changed (the bulk POSTs)."""

    count: int


class AttemptOut(BaseModel):
    number: int
    worker: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error_type: str | None
    error_message: str | None


class HandlerOut(BaseModel):
    name: str
    types: list[str]
    extensions: list[str]
    retry: dict[str, Any]
    timeout: float
    memory_mb: int | None = None
    module: str | None
    doc: str | None
