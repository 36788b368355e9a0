"""POST /uploads (and the original POST /upload/): store, route, record, publish, answer 202."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from chute.api.deps import require_key
from chute.api.ingest import Ingest, Limits, Parsed, choose_handler, job_row, notify_list, receive
from chute.api.schemas import JobOut
from chute.errors import InvalidUploadField, UnsupportedType, UploadError
from chute.jobs import new_job_id
from chute.models import Job
from chute.runtime import Runtime
from chute.storage import DISK_FULL, FileWriter

log = logging.getLogger("chute.api")
router = APIRouter()
#: SQLite's "database or disk is full" (the primary result code; extended codes add bits above 0xFF)
SQLITE_FULL = 13

UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "notify": {"type": "array", "items": {"type": "string", "format": "email"},
                           "description": "emails to tell when the job ends; repeat or comma-separate"},
                "handler": {"type": "string", "description": "force a handler by name"},
            },
        }}},
    }
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed multipart body"}, 401: {"description": "missing or wrong API key"},
    408: {"description": "the body stalled (CHUTE_UPLOAD_IDLE_TIMEOUT) or took too long"},
    413: {"description": "larger than CHUTE_MAX_UPLOAD_BYTES, or too many fields or parts"},
    415: {"description": "no handler for the type"},
    422: {"description": "missing file, bad email or unknown handler"},
    503: {"description": "the upload could not be recorded; nothing was kept, try again"},
    507: {"description": "the server's disk is full; nothing was kept"},
}


async def upload(request: Request) -> Response:
    """The hot path: no per-request dependencies or thread hops beyond the one that makes it durable."""
    response = await _accept(request)
    request.app.state.metrics.uploads.labels(str(response.status_code)).inc()
    return response


async def _accept(request: Request) -> Response:
    """Every way an upload can go wrong ends here as a 4xx with a reason or a 503, and whenever no job
    row was committed the stored file is removed."""
    rt: Runtime = request.app.state.runtime
    await require_key(request)
    job_id = new_job_id()
    parsed: Parsed | None = None
    try:
        parsed = await receive(request.stream(), request.headers.get("content-type"),
                               request.headers.get("content-length"), rt.storage, job_id, Limits.of(rt.settings))
        notify = notify_list(parsed.fields.get("notify", []), rt.settings)
        spec, type_info, mime = choose_handler(rt.registry, parsed)
        row = job_row(job_id, parsed, spec, type_info, mime, notify)
        writer, parsed = parsed.writer, None  # from here on ``_persist`` owns the file
        job = await _persist(request.app.state.ingest, writer, row)
    except InvalidUploadField as exc:
        return _invalid(exc)
    except UnsupportedType as exc:
        return _refuse({"detail": f"{exc}; accepted types: {', '.join(exc.accepted)}", "accepted": exc.accepted},
                       415)
    except UploadError as exc:
        return _refuse({"detail": str(exc)}, exc.status_code)
    except ClientDisconnect:
        return _refuse({"detail": "the client went away"}, 400)
    except Exception as exc:
        if disk_full(exc):
            log.warning("upload %s refused: the disk is full: %s", job_id, exc)
            return _refuse({"detail": "the server's disk is full; nothing was kept, try again later"}, 507)
        log.exception("could not record upload %s", job_id)
        return _refuse({"detail": "the upload could not be recorded; try again"}, 503)
    finally:
        if parsed is not None:  # parsed, then refused before ``_persist`` took the file
            _discard(parsed.writer)
    try:
        rt.relay.send([(job.id, row["dispatch_at"])])  # handed on right after commit
    except Exception:  # the relay's sweep publishes it after the grace
        log.exception("job %s is recorded; handing it on failed, the relay will", job.id)
    try:
        request.app.state.metrics.upload_bytes.inc(job.size)
        log.info("event=accepted job=%s handler=%s status=pending size=%d type=%s", job.id, spec.name,
                 job.size, mime)
        base = rt.settings.public_url
        return Response(JobOut.of(job, base).model_dump_json(), 202, media_type="application/json",
                        headers={"Location": f"{base}/jobs/{job.id}"})
    except Exception:  # the job is recorded and will run: keep its file, say where it is
        log.exception("job %s is recorded but its answer could not be built", job.id)
        return JSONResponse({"detail": f"the upload was recorded as job {job.id}, but the answer failed; "
                                       f"see GET /jobs/{job.id}"}, 503, headers={"Location": f"/jobs/{job.id}"})


async def _persist(ingest: Ingest, writer: FileWriter, row: dict[str, Any]) -> Job:
    """``Ingest.persist`` in a thread; the file is removed unless the row is committed. A cancelled
    request does not stop the thread (the row may still commit), so then the file's fate waits for it."""
    future = asyncio.ensure_future(asyncio.to_thread(ingest.persist, writer, row))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda done: None if not done.cancelled() and done.exception() is None
                                 else _discard(writer))
        raise
    except BaseException:
        _discard(writer)
        raise


def _discard(writer: FileWriter) -> None:
    try:
        writer.discard()
    except Exception:
        log.exception("could not remove %s, the file of a refused upload", writer.path)


def disk_full(exc: BaseException | None) -> bool:
    """ENOSPC or EDQUOT from the OS, SQLITE_FULL, or PostgreSQL's disk_full, here or in a cause."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        sqlite_code = getattr(exc, "sqlite_errorcode", None)
        if (isinstance(sqlite_code, int) and sqlite_code & 0xFF == SQLITE_FULL) or \
                getattr(exc, "sqlstate", None) == "53100":
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__
        seen += 1
    return False


def _refuse(body: dict[str, Any], status: int) -> JSONResponse:
    """A refusal; the connection is closed after it, since the rest of the body may still be coming."""
    return JSONResponse(body, status, headers={"Connection": "close"})


def _invalid(exc: InvalidUploadField) -> JSONResponse:
    return _refuse({"detail": [{"loc": ["body", exc.field], "msg": str(exc), "type": exc.kind}]}, 422)


router.add_api_route("/uploads", upload, methods=["POST"], status_code=202, response_model=JobOut,
                     openapi_extra=UPLOAD_FORM, responses=RESPONSES, summary="Upload a file",
                     tags=["uploads"])
router.add_api_route("/upload/", upload, methods=["POST"], status_code=202, response_model=JobOut,
                     openapi_extra=UPLOAD_FORM, responses=RESPONSES, include_in_schema=False)
