"""Reading jobs, re-running failed ones, and downloading what they stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse

from chute.api.deps import require_key, runtime
from chute.api.schemas import AttemptOut, JobOut, JobPage, NotificationOut
from chute.errors import InvalidTransition, JobNotFound
from chute.models import Job, JobStatus
from chute.runtime import Runtime

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_key)])
ERROR: dict[str, Any] = {"application/json": {"schema": {"type": "object", "required": ["detail"],
                                                         "properties": {"detail": {"type": "string"}}}}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job", "content": ERROR}}
FILE_GONE: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such job, artifact, or stored file (removed by retention)", "content": ERROR}}


def _job(rt: Runtime, job_id: str) -> Job:
    try:
        return rt.jobs.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None


@router.get("", response_model=JobPage, summary="Jobs, newest first",
            responses={400: {"description": "a cursor this API did not give out", "content": ERROR}})
def list_jobs(status: JobStatus | None = None, handler: str | None = None,
              limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
              rt: Runtime = Depends(runtime)) -> JobPage:
    try:  # an empty cursor is the first page, as no cursor is
        jobs, next_cursor = rt.jobs.list_jobs(status, handler, limit, cursor or None)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    base = rt.settings.public_url
    return JobPage(items=[JobOut.of(j, base) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, summary="One job", responses=NOT_FOUND)
def get_job(job_id: str, rt: Runtime = Depends(runtime)) -> JobOut:
    job = _job(rt, job_id)
    out = JobOut.of(job, rt.settings.public_url, rt.storage.list_artifacts(job.storage_key))
    out.notifications = [NotificationOut(id=d.id, event=d.event, recipient=d.recipient, status=d.status.value,
                                         attempts=d.attempts, last_error=d.last_error, sent_at=d.sent_at,
                                         message_id=d.message_id) for d in rt.deliveries.for_job(job_id)]
    return out


@router.post("/{job_id}/notifications/retry", response_model=list[NotificationOut], status_code=202,
             summary="Send this job's uncertain or failed emails again (same Message-ID)",
             responses={**NOT_FOUND, 409: {"description": "no uncertain or failed email to send", "content": ERROR}})
def retry_notifications(job_id: str, rt: Runtime = Depends(runtime)) -> list[NotificationOut]:
    _job(rt, job_id)
    again = [d.id for d in rt.deliveries.for_job(job_id) if d.status.value in ("uncertain", "failed")]
    if not again:
        raise HTTPException(409, f"job {job_id} has no uncertain or failed email to send again")
    rt.deliveries.requeue(again)
    return get_job(job_id, rt).notifications or []


@router.get("/{job_id}/attempts", response_model=list[AttemptOut], summary="Every attempt of a job",
            responses=NOT_FOUND)
def get_attempts(job_id: str, rt: Runtime = Depends(runtime)) -> list[AttemptOut]:
    _job(rt, job_id)
    return [AttemptOut.model_validate(a, from_attributes=True) for a in rt.jobs.attempts(job_id)]


@router.post("/{job_id}/retry", response_model=JobOut, status_code=202, summary="Re-run a failed job",
             responses={**NOT_FOUND, 409: {"description": "the job is not failed", "content": ERROR}})
def retry_job(job_id: str, rt: Runtime = Depends(runtime)) -> JobOut:
    spec = rt.registry.get(_job(rt, job_id).handler)
    try:
        job = rt.jobs.retry_failed(job_id, spec.retry.attempts if spec else None)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None
    except InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from None
    if job.dispatch_at is not None:
        rt.relay.send([(job.id, job.dispatch_at)])
    return JobOut.of(job, rt.settings.public_url)


@router.get("/{job_id}/file", summary="Download the uploaded file", response_class=FileResponse,
            responses=FILE_GONE)
def download(job_id: str, rt: Runtime = Depends(runtime)) -> FileResponse:
    job = _job(rt, job_id)
    path = rt.storage.path(job.storage_key)
    if not path.is_file():  # removed by retention, or lost: a 404, not FileResponse's 500
        raise HTTPException(404, f"the file of job {job_id} is no longer stored")
    return _attachment(path, job.filename)


@router.get("/{job_id}/artifacts/{name}", summary="Download an artifact a handler saved",
            response_class=FileResponse, responses=FILE_GONE)
def artifact(job_id: str, name: str, rt: Runtime = Depends(runtime)) -> FileResponse:
    job = _job(rt, job_id)
    path = rt.storage.artifact(job.storage_key, name)
    if path is None:
        raise HTTPException(404, f"job {job_id} has no artifact {name!r}")
    return _attachment(path, name)


def _attachment(path: Path, filename: str) -> FileResponse:
    """Always a download, never rendered inline: an uploaded HTML file must not run in our origin."""
    response = FileResponse(path, media_type="application/octet-stream", filename=filename,
                            content_disposition_type="attachment")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
