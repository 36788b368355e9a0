"""GET /metrics in Prometheus text format.

Job and attempt counts come from the database at scrape time, so they are right whichever process
(API, any worker) did the work; upload counters are this API process's own."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chute.jobs import JobService
from chute.models import JobStatus

router = APIRouter(tags=["health"])
TERMINAL = {JobStatus.PROCESSED.value, JobStatus.FAILED.value}


class JobCollector(Collector):
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        by_status, attempts = self.jobs.counts()
        current = GaugeMetricFamily("chute_jobs", "Jobs by handler and status now", labels=["handler", "status"])
        finished = CounterMetricFamily("chute_jobs_finished", "Jobs that ended, by handler and final status",
                                       labels=["handler", "status"])
        for handler, status, count in by_status:
            current.add_metric([handler, status], count)
            if status in TERMINAL:
                finished.add_metric([handler, status], count)
        runs = CounterMetricFamily("chute_attempts", "Handler attempts by handler and outcome",
                                   labels=["handler", "outcome"])
        for handler, outcome, count in attempts:
            runs.add_metric([handler, outcome], count)
        yield from (current, finished, runs)


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, jobs: JobService) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(JobCollector(jobs))
        self.uploads = Counter("chute_uploads", "Uploads answered, by HTTP status", ["code"], registry=self.registry)
        self.upload_bytes = Counter("chute_upload_bytes", "Bytes of accepted uploads", registry=self.registry)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
