"""GET /metrics in Prometheus text format.

Counters and the duration histogram are counted as events happen (``chute.telemetry``): this process's
own, or, with ``PROMETHEUS_MULTIPROC_DIR``, every process's on this host (the API's and each ``chute
worker``'s files, summed). The one gauge, the queue's depth per status, comes from the database: one
grouped count over the status index that covers only the jobs still waiting or running (never the
ended ones, however many there are), cached a few seconds so frequent scrapes cost nothing more."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Table, func, select
from sqlalchemy.exc import SQLAlchemyError

from chute import telemetry
from chute.jobs import JobService
from chute.models import Job, JobStatus

router = APIRouter(tags=["health"])
log = logging.getLogger("chute.metrics")
JOBS: Table = Job.__table__  # type: ignore[assignment]
#: the states a job is in while it is in the queue; the ended ones are counted by chute_jobs_finished
LIVE = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RETRYING)
DEPTH_TTL = 5.0


class QueueDepth(Collector):
    """``chute_queue_depth{status}``: one ``SELECT status, count(*) … WHERE status IN (live) GROUP BY status``,
    a range of ``ix_jobs_status_created`` (covering: the rows are never read), at most once per ``ttl``."""

    def __init__(self, jobs: JobService, ttl: float = DEPTH_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs, self.ttl, self.clock = jobs, ttl, clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] | None = None
        self._read_at = float("-inf")
        self._query = (select(JOBS.c.status, func.count()).where(JOBS.c.status.in_(LIVE))
                       .group_by(JOBS.c.status))

    def counts(self) -> dict[str, int] | None:
        """Jobs per live status, at most ``ttl`` seconds old; None when the database does not answer."""
        with self._lock:  # concurrent scrapes share one query
            if self.clock() - self._read_at >= self.ttl:
                try:
                    with self.jobs.db.read() as session:
                        rows = session.execute(self._query).all()
                except SQLAlchemyError as exc:
                    log.warning("queue depth left out of /metrics: the database did not answer (%s)", exc)
                    return None
                found = {JobStatus(status).value: int(n) for status, n in rows}
                self._counts = {s.value: found.get(s.value, 0) for s in LIVE}
                self._read_at = self.clock()
            return self._counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        if counts is None:
            return
        gauge = GaugeMetricFamily("chute_queue_depth", f"Jobs waiting or running now, by status (from the "
                                  f"database, at most {self.ttl:g}s old)", labels=["status"])
        for status, n in counts.items():
            gauge.add_metric([status], n)
        yield gauge


class _Own(Collector):
    """This process's counters, when there is no directory of every process's to read."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


class Metrics:
    """What one app's /metrics shows. ``uploads`` and ``upload_bytes`` are the counters the upload route
    adds to; the worker and the notifier of the same runtime count into the same ``telemetry``."""

    def __init__(self, jobs: JobService, *, depth_ttl: float = DEPTH_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.telemetry = telemetry.of(jobs.db)
        self.uploads, self.upload_bytes = self.telemetry.uploads, self.telemetry.upload_bytes
        self.depth = QueueDepth(jobs, depth_ttl, clock)
        self.registry = CollectorRegistry()
        shared = telemetry.shared_directory()
        if shared is not None:
            MultiProcessCollector(self.registry, path=str(shared))  # type: ignore[no-untyped-call]
        else:
            self.registry.register(_Own(self.telemetry.registry))
        self.registry.register(self.depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
