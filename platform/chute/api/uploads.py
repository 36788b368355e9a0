"""POST /uploads (and the original POST /upload/): store, route, record, publish, answer 202."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from chute.api.deps import require_key
from chute.api.ingest import choose_handler, job_row, notify_list, receive
from chute.api.schemas import JobOut
from chute.errors import InvalidUploadField, UnsupportedType, UploadError
from chute.jobs import new_job_id
from chute.runtime import Runtime

log = logging.getLogger("chute.api")
router = APIRouter()

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
    413: {"description": "larger than CHUTE_MAX_UPLOAD_BYTES"}, 415: {"description": "no handler for the type"},
    422: {"description": "missing file, bad email or unknown handler"},
}


async def upload(request: Request) -> Response:
    """The hot path: no per-request dependencies or thread hops beyond the one that makes it durable."""
    response = await _accept(request)
    request.app.state.metrics.uploads.labels(str(response.status_code)).inc()
    return response


async def _accept(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    await require_key(request)
    job_id = new_job_id()
    limit = rt.settings.max_upload_bytes
    try:
        parsed = await receive(request.stream(), request.headers.get("content-type"),
                               request.headers.get("content-length"), rt.storage, job_id, limit)
    except InvalidUploadField as exc:
        return _invalid(exc)
    except UploadError as exc:
        return JSONResponse({"detail": str(exc)}, exc.status_code)
    except ClientDisconnect:
        return JSONResponse({"detail": "the client went away"}, 400)
    try:
        notify = notify_list(parsed.fields.get("notify", []))
        spec, type_info, mime = choose_handler(rt.registry, parsed)
    except InvalidUploadField as exc:
        parsed.writer.abort()
        return _invalid(exc)
    except UnsupportedType as exc:
        parsed.writer.abort()
        return JSONResponse({"detail": f"{exc}; accepted types: {', '.join(exc.accepted)}",
                             "accepted": exc.accepted}, 415)
    row = job_row(job_id, parsed, spec, type_info, mime, notify)
    try:
        job = await asyncio.to_thread(request.app.state.ingest.persist, parsed.writer, row)
    except Exception:
        log.exception("could not record upload %s", job_id)
        parsed.writer.abort()
        rt.storage.delete(parsed.writer.key)
        return JSONResponse({"detail": "the upload could not be recorded; try again"}, 503)
    rt.relay.send([(job.id, row["dispatch_at"])])  # handed on right after commit
    request.app.state.metrics.upload_bytes.inc(job.size)
    log.info("event=accepted job=%s handler=%s status=pending size=%d type=%s", job.id, spec.name,
             job.size, mime)
    base = rt.settings.public_url
    return Response(JobOut.of(job, base).model_dump_json(), 202, media_type="application/json",
                    headers={"Location": f"{base}/jobs/{job.id}"})


def _invalid(exc: InvalidUploadField) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", exc.field], "msg": str(exc), "type": exc.kind}]}, 422)


router.add_api_route("/uploads", upload, methods=["POST"], status_code=202, response_model=JobOut,
                     openapi_extra=UPLOAD_FORM, responses=RESPONSES, summary="Upload a file",
                     tags=["uploads"])
router.add_api_route("/upload/", upload, methods=["POST"], status_code=202, response_model=JobOut,
                     openapi_extra=UPLOAD_FORM, responses=RESPONSES, include_in_schema=False)
