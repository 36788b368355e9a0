"""GET /handlers: what this Chute accepts and how it retries."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from chute.api.deps import require_key, runtime
from chute.api.schemas import HandlerOut
from chute.runtime import Runtime

router = APIRouter(tags=["handlers"], dependencies=[Depends(require_key)])


@router.get("/handlers", response_model=list[HandlerOut], summary="Registered handlers")
def list_handlers(rt: Runtime = Depends(runtime)) -> list[HandlerOut]:
    return [HandlerOut(**spec.describe()) for spec in sorted(rt.registry, key=lambda s: s.name)]
