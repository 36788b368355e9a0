"""The chaos run at full size, on both job sources: 1,000 jobs over a mix of handlers while workers are
SIGKILLed and restarted at random (at least 20 kills), the RabbitMQ connection is cut twice through a
TCP proxy, and the SMTP server is stopped for 60 s; then the figures per source (jobs, kills, cuts,
processed, failed, stuck, lost, emails sent, duplicate and uncertain emails) and every requirement
the run failed. Exits 1 when a source failed one.

The harness is tests/chaos/harness.py (the same code tests/chaos/test_chaos.py runs at a reduced size).

Run: .venv/bin/python bench/chaos.py [--source both|rabbitmq|database] [--jobs 1000] [--seed N] [--keep]
(RabbitMQ on CHUTE_TEST_AMQP_URL, default amqp://guest:guest@127.0.0.1:5672//; the run goes through a
proxy in front of it and deletes its queues at the end)"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "chaos" / "harness.py"
AMQP_URL = os.environ.get("CHUTE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chute_chaos_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rabbitmq_reachable(url: str) -> str | None:
    """None when RabbitMQ answers; otherwise why not."""
    from kombu.connection import Connection

    conn = Connection(url, connect_timeout=3)
    try:
        conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.release()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["both", "rabbitmq", "database"], default="both")
    parser.add_argument("--seed", type=int, default=None, help="replay a run's plan (the mix and the kill schedule)")
    parser.add_argument("--keep", action="store_true", help="keep the work directories (kept anyway on failure)")
    harness = load_harness()
    for f in dataclasses.fields(harness.Size):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(harness.FULL, f.name)), default=None,
                            help=f"default {getattr(harness.FULL, f.name)}")
    args = parser.parse_args()
    overrides: dict[str, Any] = {f.name: getattr(args, f.name) for f in dataclasses.fields(harness.Size)
                                 if getattr(args, f.name) is not None}
    size = dataclasses.replace(harness.FULL, **overrides)

    sources = ["rabbitmq", "database"] if args.source == "both" else [args.source]
    reports: list[Any] = []
    skipped: list[str] = []
    for source in sources:
        amqp_url = None
        if source == "rabbitmq":
            why = rabbitmq_reachable(AMQP_URL)
            if why is not None:
                skipped.append(f"rabbitmq: not reachable at {AMQP_URL} ({why})")
                continue
            amqp_url = AMQP_URL
        workdir = Path(tempfile.mkdtemp(prefix=f"chute-chaos-{source}-"))
        report = harness.run_chaos(size, workdir, amqp_url=amqp_url, seed=args.seed)
        reports.append(report)
        print(report.render(), flush=True)
        if report.failures():
            print(report.log_tails, flush=True)
            print(f"(work dir kept: {workdir})", flush=True)
        elif not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        print(flush=True)

    print("=== per source ===")
    for report in reports:
        failures = report.failures()
        print(f"{report.source:9} jobs {report.jobs} kills {report.kills} cuts {report.cuts} processed "
              f"{report.processed} failed {report.failed} stuck {report.stuck} lost {report.lost} emails sent "
              f"{report.emails_sent} duplicates {report.duplicate_emails} uncertain {report.uncertain_emails} "
              f"unsettled {report.unsettled_emails} total {report.timings.get('total', 0):.0f}s: "
              + ("all requirements met" if not failures else "FAILED " + "; ".join(failures)))
    for line in skipped:
        print(f"skipped {line}")
    sys.exit(1 if skipped or any(r.failures() for r in reports) else 0)


if __name__ == "__main__":
    main()
