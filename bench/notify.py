"""Notification speed: 2,000 emails through Chute's notifier to a local aiosmtpd sink, beside a bare
aiosmtplib loop sending the same 2,000 messages on one reused connection, measured in the same run.

Run: .venv/bin/python bench/notify.py [--mails 2000] [--rounds 3]

What each side does per message:
- bare: ``await smtp.sendmail(sender, [recipient], data)`` with the message bytes made beforehand
  (rendered by Chute's own templates, outside the clock): the least aiosmtplib can do;
- Chute: everything its notifier does for real, from delivery rows made by the job service's own hook:
  claim the rows (SQLite in WAL mode, as Chute runs it), render the three Jinja2 templates and build
  each message, then per message MAIL FROM, RCPT TO, commit "DATA started" with the previous message's
  outcome (before DATA, always), DATA; and commit the last outcomes.
Both connect and QUIT inside the clock. The sink runs in its own process, so it does not share this
one's interpreter lock. The rounds alternate (bare, Chute, bare, Chute, …); the medians are compared.
Every figure is measured in this run; nothing is remembered from an earlier one.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))

SINK = """
import sys
from aiosmtpd.controller import Controller

class Count:
    n = 0
    async def handle_DATA(self, server, session, envelope):
        Count.n += 1
        return "250 OK"

controller = Controller(Count(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
for line in sys.stdin:
    print(Count.n, flush=True)
controller.stop()
"""


class Sink:
    """aiosmtpd in a child process; ``count()`` asks it how many messages it has accepted."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc = subprocess.Popen([sys.executable, "-c", SINK, str(self.port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the aiosmtpd sink did not start")

    def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def make_rows(db: object, mails: int) -> None:
    """``mails`` processed jobs with one recipient each, their delivery rows made by Chute's own hook."""
    from sqlalchemy import insert, select

    from chute.db import Database
    from chute.jobs import JOBS
    from chute.models import Job, JobStatus, utcnow
    from chute.notify import DeliveryHook
    from chute.registry import Registry

    assert isinstance(db, Database)
    now = utcnow()
    rows = [{"id": f"{i:032x}", "status": JobStatus.PROCESSED, "filename": f"report-{i}.csv",
             "content_type": "text/csv", "type_info": {}, "size": 48_213 + i, "sha256": f"{i:064x}",
             "storage_key": f"k{i}", "handler": "csv_stats", "attempts": 1, "max_attempts": 3,
             "notify": [f"user{i}@example.com"], "result": {"rows": 1284 + i, "columns": 6},
             "created_at": now, "updated_at": now, "started_at": now, "finished_at": now} for i in range(mails)]
    hook = DeliveryHook(Registry([]), defaults=[], mail_from="Chute <chute@example.com>",
                        public_url="https://chute.example.com")
    with db.write() as session:
        session.connection().execute(insert(JOBS), rows)
        for job in session.scalars(select(Job)):
            hook(session, job, "processed")


async def bare(port: int, messages: list[tuple[str, str, bytes]]) -> float:
    import aiosmtplib

    started = time.perf_counter()
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await smtp.connect()
    for sender, recipient, data in messages:
        await smtp.sendmail(sender, [recipient], data)
    await smtp.quit()
    return time.perf_counter() - started


def chute_round(workdir: Path, port: int, mails: int) -> tuple[float, list[tuple[str, str, bytes]]]:
    """A fresh database with ``mails`` pending emails; the notifier sends them all. Returns the time and,
    for the bare loop, the same messages as bytes (rendered outside the clock)."""
    from sqlalchemy import select

    from chute.db import Database
    from chute.jobs import JOBS
    from chute.notify import DeliveryStore, Notifier, SmtpConfig, SmtpTransport, Templates
    from chute.notify.deliveries import DELIVERIES, Outbound, T

    db = Database(f"sqlite:///{workdir / 'chute.db'}")
    db.migrate()
    with db.write() as session:
        session.connection().execute(DELIVERIES.delete())
        session.connection().execute(JOBS.delete())
    make_rows(db, mails)
    store = DeliveryStore(db)
    config = SmtpConfig.from_url(f"smtp://127.0.0.1:{port}?starttls=false")
    notifier = Notifier(store, Templates(ROOT / "notifications" / "templates"), lambda: SmtpTransport(config),
                        mail_from="Chute <chute@example.com>", batch=100)

    # the same messages, as bytes, for the bare loop (made before the clock starts)
    with db.read() as session:
        pending = [Outbound(*r) for r in session.execute(select(
            T.id, T.job_id, T.event, T.recipient, T.run, T.attempts, T.message_id, T.context).order_by(T.id))]
    messages = [(m.sender, m.recipient, m.data) for m in (notifier.compose(row) for row in pending)]

    started = time.perf_counter()
    tally = asyncio.run(notifier.run_once())
    took = time.perf_counter() - started
    counts = store.counts()
    if tally.sent != mails or counts != {"sent": mails}:
        raise SystemExit(f"the notifier sent {tally.sent} of {mails}: {counts}")
    store.close()
    db.dispose()
    return took, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    sink = Sink()
    bare_times: list[float] = []
    chute_times: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="chute-bench-notify-") as tmp:
            workdir = Path(tmp)
            _, messages = chute_round(workdir, sink.port, 100)  # warm up both paths (imports, caches)
            asyncio.run(bare(sink.port, messages))
            for _ in range(args.rounds):
                before = sink.count()
                took, messages = chute_round(workdir, sink.port, args.mails)
                chute_times.append(took)
                bare_times.append(asyncio.run(bare(sink.port, messages)))
                if sink.count() - before != 2 * args.mails:
                    raise SystemExit(f"the sink got {sink.count() - before} messages, expected {2 * args.mails}")
    finally:
        sink.close()

    size = sum(len(m[2]) for m in messages) / len(messages)
    bare_rate = args.mails / statistics.median(bare_times)
    chute_rate = args.mails / statistics.median(chute_times)
    print(f"notify bench: {args.mails} mails (about {size / 1024:.1f} KiB each) to an aiosmtpd sink on 127.0.0.1 "
          f"(own process), {args.rounds} rounds, medians")
    print(f"  bare aiosmtplib loop, one connection, pre-built bytes: {bare_rate:8.0f} mails/s  "
          f"(rounds: {', '.join(f'{args.mails / t:.0f}' for t in bare_times)})")
    print(f"  Chute notifier (claim, render, build, record, send):  {chute_rate:8.0f} mails/s  "
          f"(rounds: {', '.join(f'{args.mails / t:.0f}' for t in chute_times)})")
    print(f"  ratio Chute / bare: {chute_rate / bare_rate:.2f}  (target >= 0.80)")


if __name__ == "__main__":
    main()
