"""The FastAPI application: routes, and the background parts that live as long as it does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chute import __version__
from chute.api import handlers, health, jobs, metrics, uploads
from chute.api.ingest import Ingest
from chute.runtime import Runtime


def create_app(rt: Runtime, *, outbox: bool = True) -> FastAPI:
    """``outbox=False`` leaves publishing to someone else (a test driving the outbox by hand)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if outbox:
            rt.outbox.start()
        try:
            yield
        finally:
            if outbox:
                rt.outbox.stop()

    app = FastAPI(title="Chute", version=__version__, lifespan=lifespan,
                  description="Upload a file; the handler for its type runs on a worker; "
                              "watch the job, get an email when it is done.")
    app.state.runtime = rt
    app.state.ingest = Ingest(rt.store, rt.settings.publish_grace)
    app.state.metrics = metrics.Metrics(rt.store)
    for module in (uploads, jobs, handlers, health, metrics):
        app.include_router(module.router)
    return app
