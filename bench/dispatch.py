"""Dispatcher speed: N no-op jobs through RabbitMQ with SQLite status tracking (every transition
recorded), enqueued directly, against the same work as a Celery no-op task (acks_late, same broker),
both measured in this run. Prints jobs/s, enqueue→processed latency p50/p99 and the worker process
tree's CPU milliseconds per job (the worker and its pool children, with psutil: the figure that drifts
least with machine noise) for each, and the ratios.

Run: .venv/bin/python bench/dispatch.py [--jobs 5000] [--concurrency 2]   (needs RabbitMQ and the bench extra)"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its live descendants."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


Result = tuple[float, list[float], float]  # jobs/s, latencies, worker-tree CPU seconds per job


def run_chute(jobs: int, concurrency: int, broker: str, workdir: Path) -> Result:
    from chute.broker import Publisher
    from chute.jobs import new_job_id
    from chute.models import Job, JobStatus, utcnow
    from chute.runtime import Runtime
    from chute.settings import Settings

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(var_dir=workdir / "var", broker_url=broker, handlers=ROOT / "bench" / "handlers",
                        queue_prefix=prefix, log_level="WARNING")
    rt = Runtime.build(settings)
    blob = rt.storage.writer("00bench", 1024)
    blob.write(b"x")
    stored = blob.finish()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_")}
    env.update({"CHUTE_VAR_DIR": str(settings.var_dir), "CHUTE_BROKER_URL": broker, "CHUTE_QUEUE_PREFIX": prefix,
                "CHUTE_HANDLERS": str(settings.handlers), "CHUTE_LOG_LEVEL": "WARNING"})
    log = (workdir / "chute-worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "chute.cli", "worker", "--concurrency", str(concurrency)],
                              env={**env, "CHUTE_LOG_LEVEL": "INFO"}, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: "consuming" in (workdir / "chute-worker.log").read_text(), 60, "the Chute worker")
    assert rt.broker is not None
    publisher = Publisher(rt.broker)
    try:
        cpu_before = tree_cpu(worker.pid)
        started = time.time()
        for first in range(0, jobs, 500):
            now = utcnow()
            rows = [{"id": new_job_id(), "status": JobStatus.PENDING, "filename": "x.bin", "content_type": "x/x",
                     "type_info": {}, "size": 1, "sha256": stored.sha256, "storage_key": stored.key, "handler": "noop",
                     "attempts": 0, "max_attempts": 3, "notify": [], "created_at": now, "updated_at": now,
                     "dispatch_at": now + timedelta(seconds=60)} for _ in range(min(500, jobs - first))]
            rt.jobs.insert(rows)  # recorded first, then published: the relay's order
            publisher.publish_jobs([r["id"] for r in rows])

        def processed() -> bool:
            with rt.db.read() as s:
                return s.scalar(select(func.count()).where(Job.status == JobStatus.PROCESSED)) == jobs

        wait_for(processed, 600, "Chute to process every job", 0.02)
        cpu = tree_cpu(worker.pid) - cpu_before
        with rt.db.read() as s:
            times = s.execute(select(Job.created_at, Job.finished_at)).all()
        last = max(f for _, f in times).timestamp()
        latencies = [(f - c).total_seconds() for c, f in times]
        return jobs / (last - started), latencies, cpu / jobs
    finally:
        publisher.close()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        rt.close()


def run_celery(jobs: int, concurrency: int, broker: str, workdir: Path) -> Result:
    queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
    out = workdir / "celery"
    out.mkdir()
    env = {**os.environ, "BENCH_BROKER": broker, "BENCH_QUEUE": queue, "BENCH_OUT": str(out),
           "PYTHONPATH": str(ROOT / "bench")}
    log = (workdir / "celery.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_noop", "worker", "--pool", "prefork",
                               "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
                               "--without-heartbeat", "-Q", queue, "-l", "info"],
                              env=env, cwd=ROOT / "bench", stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: "ready." in (workdir / "celery.log").read_text(), 60, "the Celery worker")
    sys.path.insert(0, str(ROOT / "bench"))
    os.environ.update(BENCH_BROKER=broker, BENCH_QUEUE=queue, BENCH_OUT=str(out))
    import celery_noop

    try:
        cpu_before = tree_cpu(worker.pid)
        started = time.time()
        with celery_noop.app.producer_or_acquire() as producer:
            for _ in range(jobs):
                celery_noop.noop.apply_async(args=[time.time()], producer=producer)

        def lines() -> list[str]:
            return [line for f in out.glob("*.txt") for line in f.read_text().splitlines()]

        wait_for(lambda: len(lines()) >= jobs, 600, "Celery to run every task", 0.05)
        cpu = tree_cpu(worker.pid) - cpu_before
        rows = [line.split() for line in lines()]
        last = max(float(done) for _, done in rows)
        return jobs / (last - started), [float(lat) for lat, _ in rows], cpu / jobs
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        with celery_noop.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--broker", default=BROKER)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="chute-dispatch-"))
    print(f"# bench/dispatch.py  jobs={args.jobs}  concurrency={args.concurrency}  broker={args.broker.split('@')[-1]}")
    try:
        results = {"chute": run_chute(args.jobs, args.concurrency, args.broker, workdir),
                   "celery": run_celery(args.jobs, args.concurrency, args.broker, workdir)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, label in (("chute", "chute  (SQLite, every transition recorded)"),
                        ("celery", "celery (acks_late, no result backend)   ")):
        rate, lat, cpu = results[name]
        print(f"{label}: {rate:8.1f} jobs/s   latency p50 {1000 * statistics.median(lat):8.1f} ms"
              f"   p99 {1000 * pct(lat, 99):8.1f} ms   worker CPU {1000 * cpu:6.3f} ms/job")
    print(f"ratio chute/celery throughput: {results['chute'][0] / results['celery'][0]:.2f}x   "
          f"worker CPU per job: {results['chute'][2] / results['celery'][2]:.2f}x")


if __name__ == "__main__":
    main()
