"""The FastAPI application: routes, and the background parts that live as long as it does."""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from chute import __version__, web
from chute.api import handlers, health, jobs, metrics, uploads
from chute.api.deps import METRICS_PATHS, OPEN_PATHS, KeyGate, Keys
from chute.api.ingest import Ingest
from chute.runtime import Runtime


def create_app(rt: Runtime, *, relay: bool = True) -> FastAPI:
    """``relay=False`` leaves the relay to someone else (the testing kit drives it by hand)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if relay:
            rt.relay.start()
        try:
            yield
        finally:
            if relay:
                rt.relay.stop()

    app = FastAPI(title="Chute", version=__version__, lifespan=lifespan, **_telemetry(),
                  description="Upload a file; the handler for its type runs on a worker; "
                              "watch the job, get an email when it is done.")
    app.state.runtime = rt
    app.state.ingest = Ingest(rt.jobs, rt.publish_grace)
    app.state.metrics = metrics.Metrics(rt.jobs)
    for module in (uploads, jobs, handlers, health, metrics):
        app.include_router(module.router)
    app.include_router(web.router)  # the page: shells open, its data behind the key like the rest
    # Keys before routing: every path (docs, schema, unknown ones, routes added later) but /healthz.
    app.state.keys = keys = Keys(rt.settings.api_keys, rt.settings.metrics_key)
    app.add_middleware(KeyGate, keys=keys)
    app.openapi = _documented(app.openapi, keys)  # type: ignore[method-assign]
    return app


def _telemetry() -> dict[str, Any]:
    """FastAPI's built-in OpenTelemetry asks on every request whether providers are configured (measured:
    ~4% of the API's CPU under load); it stays on only when the environment configures OpenTelemetry
    (an ``OTEL_*`` variable, as ``opentelemetry-instrument`` sets)."""
    if "telemetry" not in inspect.signature(FastAPI).parameters or any(k.startswith("OTEL_") for k in os.environ):
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


UNAUTHORIZED = {"description": "missing or wrong API key", "content": {"application/json": {"schema": {
    "type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}}}}


def _documented(openapi: Callable[[], dict[str, Any]], keys: Keys) -> Callable[[], dict[str, Any]]:
    """The schema says which operations need a key, when keys are configured (and only then: an open
    Chute documented as closed would be a lie to clients and to schema fuzzers)."""
    done: dict[str, Any] = {}

    def schema() -> dict[str, Any]:
        if "schema" in done:
            return done["schema"]  # type: ignore[no-any-return]
        spec = done["schema"] = openapi()
        needed = False
        for path, operations in spec.get("paths", {}).items():
            if path in OPEN_PATHS or not keys.required(path):
                continue
            needed = True
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)
                if path in METRICS_PATHS:
                    operation["description"] = (operation.get("description", "") +
                                                " An API key or CHUTE_METRICS_KEY opens it.").strip()
        if needed:
            spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer", "description": "one of CHUTE_API_KEYS"}
        return spec

    return schema
