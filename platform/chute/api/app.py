"""The FastAPI application: routes, and the background parts that live as long as it does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chute import __version__
from chute.api import handlers, health, jobs, metrics, uploads
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

    app = FastAPI(title="Chute", version=__version__, lifespan=lifespan,
                  description="Upload a file; the handler for its type runs on a worker; "
                              "watch the job, get an email when it is done.")
    app.state.runtime = rt
    app.state.ingest = Ingest(rt.jobs, rt.publish_grace)
    app.state.metrics = metrics.Metrics(rt.jobs)
    for module in (uploads, jobs, handlers, health, metrics):
        app.include_router(module.router)
    return app
