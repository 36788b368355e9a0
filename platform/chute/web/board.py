"""The page's data, behind the API key like every data route: the job board (``GET /board``), its
live stream (``GET /board/events``), the last hour's chart (``GET /board/stats``) and the handlers'
figures (``GET /board/handlers``).

The stream is server-sent events read by ``fetch`` (so it carries the ``Authorization`` header, which
``EventSource`` cannot): every ``TICK`` it reads the operator's window of jobs (a bounded query, see
``queries``) and sends it again only when it changed. A stream ends after ``STREAM_SECONDS`` and the
page reconnects: an open tab never holds a server's shutdown for longer than that."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from chute.api.deps import require_key, runtime
from chute.models import JobStatus
from chute.runtime import Runtime
from chute.web.queries import Board, Filter

router = APIRouter(prefix="/board", tags=["web page"], dependencies=[Depends(require_key)])
ERROR: dict[str, Any] = {"application/json": {"schema": {"type": "object", "required": ["detail"],
                                                         "properties": {"detail": {"type": "string"}}}}}


class RowError(BaseModel):
    type: str
    message: str


class Row(BaseModel):
    """A job as the list shows it: GET /jobs/{id}'s names, without the result and with the error cut short."""

    id: str
    status: JobStatus
    filename: str
    content_type: str
    size: int
    sha256: str
    handler: str
    attempts: int
    max_attempts: int
    error: RowError | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None


class BoardOut(BaseModel):
    items: list[Row]
    next_cursor: str | None
    #: jobs per status (and ``all``) under the handler filter; the status filter and the search do not apply
    counts: dict[str, int]


class Timing(BaseModel):
    runs: int
    p50: float | None
    p95: float | None


class StatsOut(BaseModel):
    since: datetime
    until: datetime
    minutes: int
    #: per minute, oldest first: ``all`` and one series per handler that finished a job
    finished: dict[str, list[dict[str, int]]]
    #: attempt duration in seconds, per handler
    durations: dict[str, Timing]
    #: more attempts in the hour than the chart reads (it shows the newest)
    truncated: bool


class HandlerFigures(BaseModel):
    counts: dict[str, int]
    last_hour: Timing
#: how often the stream looks at the window (seconds)
TICK = 1.0
#: a comment line this often keeps proxies from closing an idle stream
KEEPALIVE = 15.0
#: counts are an index scan: read at most this often when the window did not change
COUNTS_EVERY = 5.0
#: a stream's life; the page reconnects at once
STREAM_SECONDS = 30.0
LIMIT = Query(50, ge=1, le=200)


def board(request: Request) -> Board:
    """One ``Board`` per app, made on first use (the app module stays as it is)."""
    found: Board | None = getattr(request.app.state, "board", None)
    if found is None:
        rt: Runtime = request.app.state.runtime
        found = request.app.state.board = Board(rt.db)
    return found


def _filter(status: JobStatus | None = None, handler: str | None = None,
            q: str | None = Query(None, max_length=200, description="file name (any part), or the start of a "
                                  "sha256 or job id; looks through the newest 20,000 jobs")) -> Filter:
    return Filter(status, handler or None, (q or "").strip() or None)


def snapshot(b: Board, f: Filter, limit: int, cursor: str | None, counts: dict[str, int] | None = None
             ) -> dict[str, Any]:
    try:
        items, next_cursor = b.window(f, limit, cursor or None)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"items": items, "next_cursor": next_cursor, "counts": counts if counts is not None else b.counts(f.handler)}


@router.get("", response_model=BoardOut, summary="The job board: one page of list rows (no results), and counts",
            responses={400: {"description": "a cursor this API did not give out", "content": ERROR}})
def get_board(f: Filter = Depends(_filter), limit: int = LIMIT, cursor: str | None = None,
              b: Board = Depends(board)) -> dict[str, Any]:
    return snapshot(b, f, limit, cursor)


# Left out of the schema: a stream that lasts 30 s is no operation for a schema fuzzer or a client
# generator. Its frames are GET /board's answers.
@router.get("/events", include_in_schema=False)
def board_events(request: Request, f: Filter = Depends(_filter), limit: int = LIMIT, cursor: str | None = None,
                 b: Board = Depends(board)) -> StreamingResponse:
    """Streams only to a client that asks for ``Accept: text/event-stream`` (EventSource does, and the
    page); any other gets one frame and the end, so a crawler, a curl or a test walking every route
    is not held for the stream's life."""
    if cursor:
        snapshot(b, f, 1, cursor)  # a bad cursor is a 400 now, not a broken stream later
    live = "text/event-stream" in request.headers.get("accept", "").lower()
    return StreamingResponse(_stream(b, f, limit, cursor or None, STREAM_SECONDS if live else 0.0),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(b: Board, f: Filter, limit: int, cursor: str | None, life: float) -> AsyncIterator[str]:
    """Frames until ``life`` seconds have passed; the first one at once, whatever ``life`` is."""
    yield "retry: 2000\n\n"
    end = time.monotonic() + life
    last_items = last_sent = ""
    counts: dict[str, int] | None = None
    counts_at = sent_at = float("-inf")
    while True:
        now = time.monotonic()
        items, next_cursor = await run_in_threadpool(b.window, f, limit, cursor)
        seen = json.dumps(items, separators=(",", ":"))
        if counts is None or seen != last_items or now - counts_at >= COUNTS_EVERY:
            counts, counts_at = await run_in_threadpool(b.counts, f.handler), now
        last_items = seen
        frame = json.dumps({"items": items, "next_cursor": next_cursor, "counts": counts}, separators=(",", ":"))
        if frame != last_sent:
            yield f"event: board\ndata: {frame}\n\n"
            last_sent, sent_at = frame, now
        elif now - sent_at >= KEEPALIVE:
            yield ": keepalive\n\n"
            sent_at = now
        if now + TICK >= end:
            return
        await asyncio.sleep(TICK)


@router.get("/stats", response_model=StatsOut,
            summary="The last hour: jobs finished per minute, and attempt duration p50/p95 per handler")
def get_stats(handler: str | None = None, b: Board = Depends(board)) -> dict[str, Any]:
    return b.last_hour(handler or None)


@router.get("/handlers", response_model=dict[str, HandlerFigures],
            summary="Per handler: jobs per status, and the last hour's runs and p50/p95")
def get_handler_figures(b: Board = Depends(board), rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    counts = b.counts_by_handler()
    timing = b.last_hour()["durations"]
    names = sorted({spec.name for spec in rt.registry} | set(counts))
    return {name: {"counts": {s.value: counts.get(name, {}).get(s.value, 0) for s in JobStatus},
                   "last_hour": timing.get(name, {"runs": 0, "p50": None, "p95": None})} for name in names}
