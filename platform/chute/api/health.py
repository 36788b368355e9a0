"""Liveness and readiness: /readyz answers 200 only when the database and the broker (if any) both do.

/healthz needs no key, ever; /readyz needs one when CHUTE_API_KEYS is set (it opens a database and a
broker connection per call), and names a failing part without its error text (that is logged)."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from chute.api.deps import runtime
from chute.errors import BrokerUnavailable
from chute.runtime import Runtime

log = logging.getLogger("chute.api")
router = APIRouter(tags=["health"])
#: what /readyz says of a part that does not answer; the reason is logged
UNAVAILABLE = "unavailable"


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
    except Exception as exc:  # its text may name a host, a user, a path: for the log, not the answer
        log.warning("readyz: the database does not answer: %s: %s", type(exc).__name__, exc)
        checks["database"] = UNAVAILABLE
    if rt.broker is not None:
        try:
            rt.broker.ping()
            checks["broker"] = "ok"
        except BrokerUnavailable as exc:
            log.warning("readyz: the broker does not answer: %s", exc)
            checks["broker"] = UNAVAILABLE
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks,
            "took_ms": round((time.monotonic() - started) * 1000)}
    return JSONResponse(body, 200 if ready else 503)
