"""Reading jobs, re-running failed ones, cancelling, and downloading what they stored; the bulk
actions take the list's filters (``status``, ``handler``, ``q``) and answer how many they changed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse

from chute import telemetry
from chute.api.deps import require_key, runtime
from chute.api.schemas import AttemptOut, Count, JobOut, JobPage, NotificationOut
from chute.errors import InvalidTransition, JobNotFound
from chute.lifecycle import CANCEL_AT_ONCE, Cancel
from chute.models import Job, JobStatus
from chute.runtime import Runtime

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_key)])
ERROR: dict[str, Any] = {"application/json": {"schema": {"type": "object", "required": ["detail"],
                                                         "properties": {"detail": {"type": "string"}}}}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job", "content": ERROR}}
FILE_GONE: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such job, artifact, or stored file (removed by retention)", "content": ERROR}}


Q = Annotated[str | None, Query(max_length=200, description="a part of the file name (any case), or the start of "
                                 "the sha256 or job id (six hex digits or more)")]
HEX = r"^[0-9a-fA-F]{1,32}$"


def _job(rt: Runtime, job_id: str) -> Job:
    try:
        return rt.jobs.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None


@router.get("", response_model=JobPage, summary="Jobs, newest first",
            responses={400: {"description": "a cursor this API did not give out", "content": ERROR}})
def list_jobs(status: JobStatus | None = None, handler: str | None = None,
              limit: int = Query(50, ge=1, le=500), cursor: str | None = None, q: Q = None,
              id_prefix: Annotated[str | None, Query(pattern=HEX, description="jobs whose id starts so")] = None,
              id_suffix: Annotated[str | None, Query(pattern=HEX, description="jobs whose id ends so (the short id "
                                                     "`chute jobs` shows; reads every id)")] = None,
              rt: Runtime = Depends(runtime)) -> JobPage:
    try:  # an empty cursor is the first page, as no cursor is
        jobs, next_cursor = rt.jobs.list_jobs(status, handler or None, limit, cursor or None, q=q,
                                              id_prefix=id_prefix, id_suffix=id_suffix)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    base = rt.settings.public_url
    return JobPage(items=[JobOut.of(j, base) for j in jobs], next_cursor=next_cursor)


@router.get("/count", response_model=Count, summary="How many jobs match the filters (ask before a bulk action)")
def count_jobs(status: JobStatus | None = None, handler: str | None = None, q: Q = None,
               rt: Runtime = Depends(runtime)) -> Count:
    return Count(count=rt.jobs.count([status] if status else None, handler or None, q))


@router.post("/retry", response_model=Count, status_code=202, summary="Re-run every failed job that matches")
def retry_many(status: Annotated[Literal["failed"], Query(description="only failed jobs are re-run")] = "failed",
               handler: str | None = None, q: Q = None, rt: Runtime = Depends(runtime)) -> Count:
    """As ``POST /jobs/{id}/retry`` does for one, in batches of a few hundred per transaction."""
    due = rt.jobs.retry_many(handler or None, q, {spec.name: spec.retry.attempts for spec in rt.registry})
    if due:
        rt.relay.send(due)
    return Count(count=len(due))


@router.post("/cancel", response_model=Count, summary="Cancel every pending or retrying job that matches")
def cancel_many(status: Annotated[Literal["pending", "retrying"] | None,
                                  Query(description="pending or retrying; both when left out")] = None,
                handler: str | None = None, q: Q = None, rt: Runtime = Depends(runtime)) -> Count:
    """Running jobs are left alone (cancel them one by one); in batches of a few hundred per transaction."""
    statuses = [JobStatus(status)] if status else list(CANCEL_AT_ONCE)
    cancelled = rt.jobs.cancel_many(statuses, handler or None, q)
    counters = telemetry.of(rt.db)
    for _, name in cancelled:
        counters.ended(name, JobStatus.CANCELLED)
    return Count(count=len(cancelled))


@router.get("/{job_id}", response_model=JobOut, summary="One job", responses=NOT_FOUND)
def get_job(job_id: str, request: Request) -> Response:
    """The read every client polls: answered as JSON bytes directly (see ``_view``)."""
    return Response(_view(request.app.state.runtime, job_id).model_dump_json(), media_type="application/json")


def _view(rt: Runtime, job_id: str) -> JobOut:
    """The job with its emails: two statements on the DBAPI cursor, and the model built without
    validating what the database already holds (``JobOut.of``)."""
    try:
        job = rt.jobs.view(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None
    out = JobOut.of(job, rt.settings.public_url, rt.storage.list_artifacts(job.storage_key))  # type: ignore[arg-type]
    out.notifications = [NotificationOut.model_construct(**{**d, "status": d["status"].value})
                         for d in rt.deliveries.views_for_job(job_id)]
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
    return _view(rt, job_id).notifications or []


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


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job",
             responses={**NOT_FOUND, 202: {"description": "running: marked (`cancel_requested`); it ends `cancelled` "
                                                          "when its attempt ends, or at once with `kill=true`",
                                           "model": JobOut},
                        409: {"description": "the job has ended (processed, failed or cancelled)", "content": ERROR}})
def cancel_job(job_id: str, response: Response,
               kill: Annotated[bool, Query(description="stop a running attempt's process now")] = False,
               rt: Runtime = Depends(runtime)) -> JobOut:
    """A pending or retrying job is cancelled at once (200): it never runs again and nobody is mailed."""
    try:
        job, decision = rt.jobs.cancel(job_id, kill)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None
    except InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from None
    if decision is Cancel.MARK:
        response.status_code = 202  # the worker's record of the attempt ends it, and counts it
    else:
        telemetry.of(rt.db).ended(job.handler, JobStatus.CANCELLED)
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
