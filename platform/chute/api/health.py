"""Liveness and readiness: /readyz answers 200 only when the database and the broker (if any) both do."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from chute.api.deps import runtime
from chute.errors import BrokerUnavailable
from chute.runtime import Runtime

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database and the broker answer")
def readyz(rt: Runtime = Depends(runtime)) -> JSONResponse:
    checks: dict[str, str] = {}
    started = time.monotonic()
    try:
        rt.db.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"{type(exc).__name__}: {exc}"[:300]
    if rt.broker is not None:
        try:
            rt.broker.ping()
            checks["broker"] = "ok"
        except BrokerUnavailable as exc:
            checks["broker"] = str(exc)[:300]
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks,
            "took_ms": round((time.monotonic() - started) * 1000)}
    return JSONResponse(body, 200 if ready else 503)
