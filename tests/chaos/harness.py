"""The chaos run: N jobs over a mix of handlers while workers are SIGKILLed and restarted at random,
the RabbitMQ connection is cut through a TCP proxy, and the SMTP server is stopped for a while; then
a check, from the tables and from what the SMTP server received, that nothing was lost or doubled.

One implementation for both callers: ``tests/chaos/test_chaos.py`` (a reduced size, ``REDUCED``) and
``bench/chaos.py`` (the full size, ``FULL``); both load this file by path, under the module name
``chute_chaos_harness``.

One of the kills is aimed rather than random: once the SMTP server is back, at the first worker
seen with emails claimed (``sending``) by its notifier, so a notifier dying mid-batch is always in
the run; the rest land at random points of the chaos window.

Everything Chute runs is a real process (``chute api``, ``chute worker``) started from
``sys.executable -m chute.cli``; the harness itself runs only the SMTP server (aiosmtpd, in a thread),
the TCP proxy in front of RabbitMQ, the uploads (httpx) and the controller. It never imports
``chute``: it reads the tables with sqlite3, read-only, so it does not care what the job source is
behind ``CHUTE_BROKER_URL`` (unset: whatever Chute uses when there is no broker)."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import random
import secrets
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HANDLERS = HERE / "handlers"
TEMPLATES = ROOT / "notifications" / "templates"
RECIPIENT = "someone@example.com"
TERMINAL = frozenset({"processed", "failed"})
SETTLED = frozenset({"sent", "failed", "uncertain"})
#: attempt outcomes that are not counted against the job (a graceful hand-back; never expected here)
UNCOUNTED = frozenset({"interrupted"})
POLL = 0.5


# --- what each handler must end as -----------------------------------------------------------------
@dataclass(frozen=True)
class Behaviour:
    """One handler of ``tests/chaos/handlers/chaos.py`` and what it must do: keep the two in step."""

    handler: str
    extension: str
    #: share of the jobs
    weight: float
    #: processed | failed: how the job ends when no worker kill takes its last attempt
    ends: str
    max_attempts: int
    #: the error type on a job that ends ``failed`` by its own last attempt
    final_error: str | None = None

    def parameter(self, rng: random.Random) -> str:
        """The file's first line: what the handler reads to decide how to behave."""
        if self.handler == "chaos_slow":
            return f"{rng.uniform(0.2, 1.5):.2f}"
        if self.handler == "chaos_flaky":
            return str(rng.randint(1, 3))
        return "-"

    def outcome(self, attempt: int, parameter: str) -> str:
        """How attempt number ``attempt`` ends when its worker is not killed."""
        if self.handler == "chaos_flaky":
            return "error" if attempt <= int(parameter) else "processed"
        if self.handler == "chaos_broken":
            return "error"
        if self.handler == "chaos_suicide":
            return "crashed"
        return "processed"


BEHAVIOURS: dict[str, Behaviour] = {b.handler: b for b in (
    Behaviour("chaos_fast", ".fast", 0.34, "processed", 6),
    Behaviour("chaos_slow", ".slow", 0.26, "processed", 6),
    Behaviour("chaos_flaky", ".flaky", 0.22, "processed", 6),
    Behaviour("chaos_broken", ".broken", 0.12, "failed", 3, "OSError"),
    Behaviour("chaos_suicide", ".suicide", 0.06, "failed", 2, "HandlerCrashed"),
)}
WORKER_LOST = "WorkerLost"
#: an attempt stopped because another job's handler process died and took the pool with it
POOL_BROKEN = "PoolBroken"


# --- how big a run is ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    jobs: int
    workers: int
    concurrency: int
    #: the uploads are spread evenly over this many seconds
    upload_seconds: float
    #: the kills are spread over this many seconds from the first upload (at least ``kills`` of them)
    chaos_seconds: float
    kills: int
    #: RabbitMQ connection cuts (none on the database source), each ``cut_seconds`` long
    cuts: int
    cut_seconds: float
    #: the SMTP server stops this long after the first upload, for ``smtp_down_seconds``
    smtp_down_at: float
    smtp_down_seconds: float
    #: how long after the chaos ends every job must be terminal
    job_grace: float
    #: every email must arrive within this many seconds of when it could first be sent (its row made,
    #: or the SMTP server back, whichever is later)
    email_window: float = 60.0


REDUCED = Size(jobs=160, workers=2, concurrency=2, upload_seconds=16.0, chaos_seconds=24.0, kills=7, cuts=2,
               cut_seconds=3.0, smtp_down_at=4.0, smtp_down_seconds=8.0, job_grace=60.0)
FULL = Size(jobs=1000, workers=3, concurrency=2, upload_seconds=75.0, chaos_seconds=100.0, kills=24, cuts=2,
            cut_seconds=5.0, smtp_down_at=15.0, smtp_down_seconds=60.0, job_grace=180.0)


# --- the SMTP server -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Received:
    message_id: str
    job: str
    at: float  # time.time()


class SmtpSink:
    """aiosmtpd in its own thread, recording every message's Message-ID; ``stop()`` and ``start()``
    take it down (dropping the connections it has) and bring it back on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._controller: Any = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        controller = Controller(_SinkHandler(self), hostname="127.0.0.1", port=self.port, ready_timeout=10)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def add(self, data: bytes) -> None:
        message = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
        item = Received(str(message.get("Message-ID", "")).strip(), str(message.get("X-Chute-Job", "")), time.time())
        with self._lock:
            self.received.append(item)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.sink.add(bytes(envelope.original_content or envelope.content or b""))
        return "250 OK: queued"


# --- the TCP proxy in front of RabbitMQ (the idea of tests/integration/conftest.py's TcpProxy) ------
class TcpProxy:
    """Forwards 127.0.0.1:port to a target; ``cut()`` drops every connection and refuses new ones
    until ``restore()``: the broker, as the clients see it, goes away and comes back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self.restore()
        self._thread.start()

    def restore(self) -> None:
        with self._lock:
            if self._listener is None:
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", self.port))
                listener.listen(64)
                listener.setblocking(False)
                self._listener = listener

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for a, b in self._pairs:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self._pairs.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
                pairs = list(self._pairs)
            selector = selectors.DefaultSelector()
            try:
                if listener is not None:
                    selector.register(listener, selectors.EVENT_READ, None)
                for a, b in pairs:
                    selector.register(a, selectors.EVENT_READ, b)
                    selector.register(b, selectors.EVENT_READ, a)
                ready = selector.select(timeout=0.05)
            except (ValueError, OSError):  # a socket closed under us by cut(): look again
                selector.close()
                continue
            for key, _ in ready:
                self._ready(key.fileobj, key.data)  # type: ignore[arg-type]
            selector.close()

    def _ready(self, sock: socket.socket, peer: socket.socket | None) -> None:
        with self._lock:
            if peer is None:
                if sock is not self._listener:
                    return
                try:
                    client, _ = sock.accept()
                except OSError:
                    return
                try:
                    upstream = socket.create_connection(self.target, timeout=3)
                except OSError:
                    client.close()
                    return
                client.setblocking(True)
                upstream.settimeout(None)
                self._pairs.append((client, upstream))
                return
            if not any(sock in pair for pair in self._pairs):
                return
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        with self._lock:
            for pair in [p for p in self._pairs if sock in p]:
                self._pairs.remove(pair)
                for s in pair:
                    s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- Chute's processes -----------------------------------------------------------------------------
class Proc:
    """``chute ARGS`` as a real process, in a session of its own, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.log = cwd / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("w")
        self.started = time.time()
        self.killed = False
        self.popen = subprocess.Popen([sys.executable, "-m", "chute.cli", *args], env=env, cwd=cwd, text=True,
                                      stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the process itself (not its group): what an out-of-memory kill does."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL past ``timeout``; then whatever is left of its process group."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # its group is its own (start_new_session): children only
        if not self._out.closed:
            self._out.close()
        return self.popen.returncode

    def group_alive(self) -> bool:
        """Whether anything of its process group is still running (say, a handler child it left)."""
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def process_env(var_dir: Path, smtp_url: str, public_url: str, queue_prefix: str,
                broker_url: str | None) -> dict[str, str]:
    """What every process of the run shares, built as tests/integration/conftest.py's ``process_env``
    does: the caller's environment without any CHUTE_ setting, then the run's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_")}
    env.update({
        "CHUTE_VAR_DIR": str(var_dir),
        "CHUTE_HANDLERS": str(HANDLERS),
        "CHUTE_TEMPLATES": str(TEMPLATES),
        "CHUTE_QUEUE_PREFIX": queue_prefix,
        "CHUTE_LEASE_SECONDS": "3",
        "CHUTE_RELAY_INTERVAL": "0.2",
        "CHUTE_SHUTDOWN_GRACE": "2",
        "CHUTE_SMTP_URL": smtp_url,
        "CHUTE_NOTIFY_BACKOFF": "1",
        "CHUTE_NOTIFY_MAX_BACKOFF": "5",
        "CHUTE_LOG_LEVEL": "INFO",
        "CHUTE_PUBLIC_URL": public_url,
        "PYTHONUNBUFFERED": "1",
    })
    if broker_url is not None:  # unset: the job source Chute uses when there is no broker
        env["CHUTE_BROKER_URL"] = broker_url
    return env


def proxied(amqp_url: str, port: int) -> str:
    """``amqp_url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(amqp_url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"))


def delete_queues(amqp_url: str, prefix: str) -> list[str]:
    """Delete the run's queues (``<prefix>.work``, ``<prefix>.dead``) straight on RabbitMQ; returns
    what could not be deleted, and why."""
    from kombu.connection import Connection

    problems = []
    with Connection(amqp_url, connect_timeout=5) as conn:
        channel = conn.channel()
        for name in (f"{prefix}.work", f"{prefix}.dead"):
            try:
                channel.queue_delete(name)
            except Exception as exc:
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
                channel = conn.channel()
    return problems


# --- the tables, read-only ---------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRow:
    id: str
    status: str
    handler: str
    attempts: int
    max_attempts: int
    error_type: str | None
    result: Any


@dataclass(frozen=True)
class AttemptRow:
    number: int
    outcome: str | None
    error_type: str | None


def victim(attempt: AttemptRow) -> bool:
    """An attempt something outside its handler ended: a killed worker, or a sibling that broke the pool."""
    return attempt.outcome == "lost" or (attempt.outcome == "crashed" and attempt.error_type == POOL_BROKEN)


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    job_id: str
    event: str
    recipient: str
    run: int
    status: str
    message_id: str
    last_error: str | None
    created_at: float  # epoch seconds
    claimed_by: str | None


def _epoch(value: Any) -> float:
    """A naive-UTC timestamp as SQLAlchemy stores it in SQLite, as epoch seconds."""
    if value is None:
        return 0.0
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp()


def _json(value: Any) -> Any:
    if value is None or not isinstance(value, str | bytes):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


class Tables:
    """The run's SQLite file, opened read-only for every look."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def _rows(self, query: str) -> list[sqlite3.Row]:
        conn = self._connect()
        try:
            return list(conn.execute(query))
        finally:
            conn.close()

    def statuses(self) -> dict[str, str]:
        return {r["id"]: str(r["status"]) for r in self._rows("SELECT id, status FROM jobs")}

    def claim_owners(self) -> list[str]:
        """The notifier of each email being sent right now (``sending``), one entry per email."""
        return [str(r["claimed_by"]) for r in self._rows("SELECT claimed_by FROM deliveries WHERE status = 'sending' "
                                                         "AND claimed_by IS NOT NULL")]

    def delivery_statuses(self) -> list[str]:
        return [str(r["status"]) for r in self._rows("SELECT status FROM deliveries")]

    def jobs(self) -> dict[str, JobRow]:
        rows = self._rows("SELECT id, status, handler, attempts, max_attempts, error, result FROM jobs")
        out = {}
        for r in rows:
            error = _json(r["error"])
            out[r["id"]] = JobRow(r["id"], str(r["status"]), r["handler"], int(r["attempts"]), int(r["max_attempts"]),
                                  error.get("type") if isinstance(error, dict) else None, _json(r["result"]))
        return out

    def attempts(self) -> dict[str, list[AttemptRow]]:
        out: dict[str, list[AttemptRow]] = {}
        for r in self._rows("SELECT job_id, number, outcome, error_type FROM job_attempts ORDER BY job_id, id"):
            out.setdefault(r["job_id"], []).append(AttemptRow(int(r["number"]), r["outcome"], r["error_type"]))
        return out

    def deliveries(self) -> list[DeliveryRow]:
        rows = self._rows("SELECT id, job_id, event, recipient, run, status, message_id, last_error, created_at, "
                          "claimed_by FROM deliveries ORDER BY id")
        return [DeliveryRow(int(r["id"]), r["job_id"], r["event"], r["recipient"], int(r["run"]), str(r["status"]),
                            str(r["message_id"]).strip(), r["last_error"], _epoch(r["created_at"]), r["claimed_by"])
                for r in rows]


# --- the report --------------------------------------------------------------------------------------
@dataclass
class Report:
    source: str
    size: Size
    seed: int
    workdir: Path
    jobs: int = 0
    accepted: int = 0
    refused: int = 0
    kills: int = 0
    cuts: int = 0
    smtp_down: tuple[float, float] | None = None
    #: workers that exited without being killed by the controller (each was replaced)
    worker_exits: int = 0
    #: killed workers whose process group still had a live process at the end (a handler child left over)
    orphans: int = 0
    processed: int = 0
    failed: int = 0
    #: of ``failed``: jobs of a handler that should end ``processed``, whose every attempt a kill took
    failed_worker_lost: int = 0
    stuck: int = 0
    lost: int = 0
    #: job rows no accepted upload accounts for
    unexpected_jobs: int = 0
    attempts_over_max: int = 0
    emails_expected: int = 0
    emails_sent: int = 0
    duplicate_emails: int = 0
    #: email rows beyond the one a job's outcome calls for: a second email to the same person about the
    #: same job, under a Message-ID of its own (so not a duplicate by Message-ID, but one in the inbox)
    extra_emails: int = 0
    uncertain_emails: int = 0
    uncertain_received: int = 0
    unsettled_emails: int = 0
    failed_emails: int = 0
    #: rows marked ``sent`` whose Message-ID never arrived
    missing_emails: int = 0
    #: Message-IDs that arrived with no row behind them
    unexpected_emails: int = 0
    late_emails: int = 0
    max_email_delay: float = 0.0
    by_handler: dict[str, Counter[str]] = field(default_factory=dict)
    #: every attempt row's outcome, counted (``lost``: the attempt a worker kill took)
    outcomes: Counter[str] = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)
    #: one line per problem, by requirement
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    log_tails: str = ""

    def problem(self, requirement: str, line: str) -> None:
        self.problems.setdefault(requirement, []).append(line)

    def failures(self) -> list[str]:
        """The requirements this run failed, each with its count: empty when it passed."""
        failed = []
        checks = [
            ("uploads refused", self.refused), ("lost", self.lost), ("stuck", self.stuck),
            ("kills below target", max(0, self.size.kills - self.kills)),
            ("cuts below target", max(0, self.expected_cuts - self.cuts)),
            ("attempts over max", self.attempts_over_max), ("duplicate emails", self.duplicate_emails),
            ("extra emails", self.extra_emails),
            ("unsettled emails", self.unsettled_emails), ("failed emails", self.failed_emails),
            ("missing emails", self.missing_emails), ("unexpected emails", self.unexpected_emails),
            ("late emails", self.late_emails), ("unexpected jobs", self.unexpected_jobs),
            ("controller errors", len(self.problems.get("controller", []))),
        ]
        failed += [f"{name}: {count}" for name, count in checks if count]
        for requirement in ("outcome", "attempts", "email rows"):  # counted by job (a line starts with its id)
            jobs = {line.split(" ", 1)[0] for line in self.problems.get(requirement, [])}
            if jobs:
                failed.append(f"{requirement}: {len(jobs)} jobs")
        return failed

    @property
    def expected_cuts(self) -> int:
        return self.size.cuts if self.source == "rabbitmq" else 0

    def render(self, max_lines: int = 25) -> str:
        down = f"{self.smtp_down[1] - self.smtp_down[0]:.1f}s" if self.smtp_down else "no"
        t = self.timings
        lines = [
            f"chaos run on {self.source} (seed {self.seed}, {self.size.workers} workers x {self.size.concurrency}, "
            f"work dir {self.workdir})",
            f"  jobs {self.jobs}  accepted {self.accepted}  refused {self.refused}  kills {self.kills}  cuts "
            f"{self.cuts}  smtp down {down}  unexpected worker exits {self.worker_exits}  orphans {self.orphans}",
            f"  processed {self.processed}  failed {self.failed} (of them WorkerLost on a handler that succeeds: "
            f"{self.failed_worker_lost})  stuck {self.stuck}  lost {self.lost}  unexpected jobs "
            f"{self.unexpected_jobs}  attempts over max {self.attempts_over_max}",
            f"  emails expected {self.emails_expected}  sent {self.emails_sent} (distinct Message-IDs received)  "
            f"duplicates {self.duplicate_emails}  extra {self.extra_emails} (a second email about one job)  "
            f"uncertain {self.uncertain_emails} (of them received {self.uncertain_received})  unsettled "
            f"{self.unsettled_emails}  failed {self.failed_emails}  "
            f"missing {self.missing_emails}  unexpected {self.unexpected_emails}  late {self.late_emails} "
            f"(slowest {self.max_email_delay:.1f}s after it could first be sent)",
            "  attempts: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            "  time: " + "  ".join(f"{k} {v:.1f}s" for k, v in t.items()),
            "  by handler: " + "; ".join(f"{h} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                                         for h, c in sorted(self.by_handler.items())),
        ]
        failures = self.failures()
        lines.append("  requirements: " + ("all met" if not failures else "FAILED: " + "; ".join(failures)))
        for requirement, items in self.problems.items():
            lines.append(f"  {requirement} ({len(items)}):")
            lines += [f"    {item}" for item in items[:max_lines]]
            if len(items) > max_lines:
                lines.append(f"    … and {len(items) - max_lines} more")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Planned:
    """One upload: its file name (the extension picks the handler) and content."""

    index: int
    behaviour: Behaviour
    parameter: str
    filename: str
    content: bytes


@dataclass
class Event:
    at: float  # seconds after the first upload
    action: str  # kill | cut | restore | smtp-stop | smtp-start


class ChaosRun:
    def __init__(self, size: Size, workdir: Path, amqp_url: str | None, seed: int | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.size = size
        self.workdir = workdir
        self.amqp_url = amqp_url
        self.source = "rabbitmq" if amqp_url else "database"
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 32)
        self.rng = random.Random(self.seed)
        self.say = log
        self.prefix = f"chaos-{secrets.token_hex(4)}"
        self.var_dir = workdir / "var"
        self.report = Report(self.source, size, self.seed, workdir)
        self.sink = SmtpSink(free_port())
        self.proxy: TcpProxy | None = None
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.every_worker: list[Proc] = []
        self._serial = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.accepted: dict[str, Planned] = {}
        self.refusals: list[str] = []
        self.smtp_stopped_at: float | None = None
        self.smtp_started_at: float | None = None
        self.t0 = 0.0
        self.api_port = free_port()
        self._next_say = 0.0
        self._workers_lock = threading.RLock()
        self._hunter: threading.Thread | None = None

    # -- set-up -----------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        broker = proxied(self.amqp_url, self.proxy.port) if self.amqp_url and self.proxy else None
        return process_env(self.var_dir, self.sink.url, self.api_url, self.prefix, broker)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _start_worker(self) -> Proc:
        with self._lock:
            self._serial += 1
            serial = self._serial
        worker = Proc(f"worker-{serial:02d}", ["worker", "--concurrency", str(self.size.concurrency)], self._env(),
                      self.workdir)
        self.workers.append(worker)
        self.every_worker.append(worker)
        return worker

    def _wait_for_api(self, client: httpx.Client, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.api is not None
            if not self.api.alive:
                raise RuntimeError(f"chute api exited ({self.api.popen.returncode}):\n{self.api.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/healthz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"chute api did not answer /healthz within {timeout:.0f}s:\n{self.api.tail()}")
            time.sleep(0.2)

    def plan_uploads(self) -> list[Planned]:
        """The mix, in exact proportions (every handler gets its share), shuffled."""
        kinds: list[Behaviour] = []
        for b in BEHAVIOURS.values():
            kinds += [b] * max(1, round(b.weight * self.size.jobs))
        kinds = kinds[: self.size.jobs]
        kinds += [BEHAVIOURS["chaos_fast"]] * (self.size.jobs - len(kinds))
        self.rng.shuffle(kinds)
        planned = []
        for i, b in enumerate(kinds):
            parameter = b.parameter(self.rng)
            content = f"{parameter}\n{self.prefix}-{i}-{secrets.token_hex(4)}\n".encode()
            planned.append(Planned(i, b, parameter, f"job-{i:05d}{b.extension}", content))
        return planned

    def plan_events(self) -> list[Event]:
        s = self.size
        # one kill is aimed (see _hunt): at the worker whose notifier holds claimed emails once the SMTP
        # server is back and the backlog goes out; the others from 2 s on (the first workers are up by
        # then), one in each slot, at a random point of it
        aimed = 1 if s.smtp_down_seconds > 0 and s.kills > 0 else 0
        slot = (s.chaos_seconds - 2.0) / max(1, s.kills - aimed)
        events = [Event(2.0 + (i + self.rng.uniform(0.1, 0.9)) * slot, "kill") for i in range(s.kills - aimed)]
        if aimed:
            events.append(Event(s.smtp_down_at + s.smtp_down_seconds + 0.01, "kill-notifier"))
        if self.amqp_url:
            free_from = 1.0
            for j in range(s.cuts):
                start = max(free_from, self.rng.uniform(j / s.cuts, (j + 0.6) / s.cuts) * s.chaos_seconds)
                events += [Event(start, "cut"), Event(start + s.cut_seconds, "restore")]
                free_from = start + s.cut_seconds + 2.0
        if s.smtp_down_seconds > 0:
            events += [Event(s.smtp_down_at, "smtp-stop"), Event(s.smtp_down_at + s.smtp_down_seconds, "smtp-start")]
        return sorted(events, key=lambda e: e.at)

    # -- the parts that run during the chaos ------------------------------------------------------
    def _upload(self, client: httpx.Client, item: Planned, at: float) -> None:
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing: the uploads are spread over upload_seconds
        try:
            response = client.post("/uploads", files={"file": (item.filename, item.content)},
                                   data={"notify": RECIPIENT}, timeout=60)
        except httpx.HTTPError as exc:
            with self._lock:
                self.refusals.append(f"{item.filename}: {type(exc).__name__}: {exc}")
            return
        if response.status_code != 202:
            with self._lock:
                self.refusals.append(f"{item.filename}: {response.status_code} {response.text[:200]}")
            return
        job_id = response.json()["id"]
        with self._lock:
            self.accepted[job_id] = item

    def _controller(self, events: list[Event]) -> None:
        """Runs the planned events at their times; all along (and afterwards, until ``_stop``) replaces
        any worker that exited on its own."""
        pending = list(events)
        try:
            while not self._stop.is_set():
                now = time.monotonic() - self.t0
                while pending and pending[0].at <= now:
                    self._act(pending.pop(0).action)
                self._replace_exited()
                wait = min(0.2, pending[0].at - now) if pending else 0.2
                self._stop.wait(max(wait, 0.01))
        except Exception as exc:  # reported, and the run ends: a controller that cannot act proves nothing
            self.report.problem("controller", f"{type(exc).__name__}: {exc}")
            self._stop.set()
        if self._hunter is not None:
            self._hunter.join(timeout=30)

    def _kill(self, victim: Proc | None = None, why: str = "") -> None:
        """SIGKILL ``victim`` (a random live worker by default) and start its replacement."""
        with self._workers_lock:
            if victim is None or victim not in self.workers or not victim.alive:
                victim = self.rng.choice([w for w in self.workers if w.alive] or self.workers)
            victim.kill()
            self.workers.remove(victim)
            self.report.kills += 1
            self.say(f"[{self._clock()}] killed {victim.name} (pid {victim.pid}){why}; kill {self.report.kills}")
            self._start_worker()

    def _hunt(self, window: float = 10.0) -> None:
        """The aimed kill: the first live worker seen with emails claimed (``sending``) by its notifier in
        the ``window`` seconds after the SMTP server came back; a random one when none is seen."""
        try:
            tables = Tables(self.var_dir / "chute.db")
            deadline = time.monotonic() + window
            while time.monotonic() < deadline and not self._stop.is_set():
                owners = Counter(tables.claim_owners())
                with self._workers_lock:
                    by_pid = {str(w.pid): w for w in self.workers if w.alive}
                    for owner, claimed in owners.items():
                        victim = by_pid.get(owner.split(":")[-2] if owner.count(":") >= 2 else "")
                        if victim is not None:
                            self._kill(victim, f", its notifier holding {claimed} claimed emails")
                            return
                self._stop.wait(0.02)
            if not self._stop.is_set():
                self._kill(why=f" (aimed kill: no notifier seen holding claims within {window:.0f}s)")
        except Exception as exc:
            self.report.problem("controller", f"the aimed kill failed: {type(exc).__name__}: {exc}")

    def _act(self, action: str) -> None:
        r = self.report
        if action == "kill":
            self._kill()
        elif action == "kill-notifier":
            self._hunter = threading.Thread(target=self._hunt, name="chaos-hunter", daemon=True)
            self._hunter.start()
        elif action == "cut" and self.proxy is not None:
            self.proxy.cut()
            r.cuts += 1
            self.say(f"[{self._clock()}] cut the RabbitMQ connection (cut {r.cuts})")
        elif action == "restore" and self.proxy is not None:
            self.proxy.restore()
            self.say(f"[{self._clock()}] RabbitMQ reachable again")
        elif action == "smtp-stop":
            self.sink.stop()
            self.smtp_stopped_at = time.time()
            self.say(f"[{self._clock()}] stopped the SMTP server")
        elif action == "smtp-start":
            self.sink.start()
            self.smtp_started_at = time.time()
            self.say(f"[{self._clock()}] SMTP server back")

    def _replace_exited(self) -> None:
        with self._workers_lock:
            exited = [w for w in self.workers if not w.alive]
            for worker in exited:
                self.workers.remove(worker)
        for worker in exited:
            self.report.worker_exits += 1
            self.say(f"[{self._clock()}] {worker.name} exited on its own ({worker.popen.returncode}); "
                     f"starting another:\n{worker.tail(15)}")
            if self.report.worker_exits > 20:
                raise RuntimeError("more than 20 workers exited on their own; giving up")
            with self._workers_lock:
                self._start_worker()

    def _clock(self) -> str:
        return f"{time.monotonic() - self.t0:6.1f}s"

    # -- waiting for the end ----------------------------------------------------------------------
    def _wait_for_jobs(self, tables: Tables, deadline: float) -> bool:
        """Until every accepted job is terminal, or the deadline: polls the table."""
        last = -1
        while True:
            with self._lock:
                ids = list(self.accepted)
            statuses = tables.statuses()
            done = sum(1 for j in ids if statuses.get(j) in TERMINAL)
            if done == len(ids):
                return True
            if done != last and time.monotonic() > self._next_say:
                self._next_say = time.monotonic() + 5.0
                self.say(f"[{self._clock()}] {done}/{len(ids)} jobs terminal")
                last = done
            if time.monotonic() > deadline:
                return False
            self._stop.wait(POLL)

    def _wait_for_mail(self, tables: Tables, deadline: float) -> bool:
        """Until every email row is settled (sent, failed or uncertain), or the deadline."""
        while True:
            statuses = tables.delivery_statuses()
            unsettled = sum(1 for s in statuses if s not in SETTLED)
            if not unsettled:
                return True
            if time.monotonic() > deadline:
                return False
            self._stop.wait(POLL)

    # -- the whole run ----------------------------------------------------------------------------
    def run(self) -> Report:
        r = self.report
        started = time.monotonic()
        self.var_dir.mkdir(parents=True, exist_ok=True)
        controller: threading.Thread | None = None
        try:
            self.sink.start()
            if self.amqp_url:
                target = urlsplit(self.amqp_url)
                self.proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 5672))
            self.api = Proc("api", ["api", "--host", "127.0.0.1", "--port", str(self.api_port)], self._env(),
                            self.workdir)
            planned = self.plan_uploads()
            events = self.plan_events()
            r.jobs = len(planned)
            with httpx.Client(base_url=self.api_url) as client:
                self._wait_for_api(client)
                for _ in range(self.size.workers):
                    self._start_worker()
                r.timings["start"] = time.monotonic() - started
                self.say(f"chaos on {self.source}: {r.jobs} jobs over {self.size.upload_seconds:.0f}s, "
                         f"{self.size.workers} workers, seed {self.seed}, work dir {self.workdir}")
                self.t0 = time.monotonic()
                controller = threading.Thread(target=self._controller, args=(events,), name="chaos-controller",
                                              daemon=True)
                controller.start()
                gap = self.size.upload_seconds / max(1, len(planned))
                with ThreadPoolExecutor(max_workers=4, thread_name_prefix="chaos-upload") as pool:
                    futures = [(item, pool.submit(self._upload, client, item, self.t0 + item.index * gap))
                               for item in planned]
                for item, future in futures:
                    exc = future.exception()
                    if exc is not None:
                        self.refusals.append(f"{item.filename}: {type(exc).__name__}: {exc}")
                r.timings["uploads"] = time.monotonic() - self.t0
                self.say(f"[{self._clock()}] uploads done: {len(self.accepted)} accepted, "
                         f"{len(self.refusals)} refused")
                chaos_end = self.t0 + max([e.at for e in events] + [self.size.chaos_seconds])
                tables = Tables(self.var_dir / "chute.db")
                # the events are the controller's; the end is measured from the last of them
                while time.monotonic() < chaos_end and controller.is_alive():
                    self._stop.wait(POLL)
                r.timings["chaos"] = time.monotonic() - self.t0
                jobs_done = self._wait_for_jobs(tables, chaos_end + self.size.job_grace)
                r.timings["jobs terminal"] = time.monotonic() - self.t0
                if not jobs_done:
                    self.say(f"[{self._clock()}] deadline: not every job is terminal")
                smtp_back = self.t0 + self.size.smtp_down_at + self.size.smtp_down_seconds
                if self.smtp_started_at is not None:  # when it really came back, on this clock
                    smtp_back = time.monotonic() - (time.time() - self.smtp_started_at)
                mail_deadline = max(time.monotonic(), smtp_back) + self.size.email_window + 2 * POLL
                self._wait_for_mail(tables, mail_deadline)
                r.timings["mail settled"] = time.monotonic() - self.t0
            self._stop.set()
            if controller is not None:
                controller.join(timeout=30)
            self._check(tables)
        except BaseException:
            self.say(self._tails())
            raise
        finally:
            self._stop.set()
            if controller is not None:
                controller.join(timeout=30)
            self._teardown()
            r.timings["total"] = time.monotonic() - started
        if r.failures():
            r.log_tails = self._tails()
        return r

    def _teardown(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=15)
        for worker in self.every_worker:
            if worker.killed and worker.group_alive():
                self.report.orphans += 1
            worker.stop(timeout=1)
        if self.api is not None:
            self.api.stop(timeout=15)
        self.sink.stop()
        if self.proxy is not None:
            self.proxy.close()
        if self.amqp_url:
            problems = delete_queues(self.amqp_url, self.prefix)
            self.report.notes += [f"could not delete queue {p}" for p in problems]

    def _tails(self, lines: int = 40) -> str:
        out = []
        for proc in ([self.api] if self.api else []) + self.every_worker:
            state = "killed" if proc.killed else f"exit {proc.popen.returncode}"
            out.append(f"--- {proc.log} ({state}), last {lines} lines ---\n{proc.tail(lines)}")
        return "\n".join(out)

    # -- the verdict ------------------------------------------------------------------------------
    def _check(self, tables: Tables) -> None:
        r = self.report
        r.accepted = len(self.accepted)
        r.refused = len(self.refusals)
        for line in self.refusals:
            r.problem("uploads refused", line)
        jobs = tables.jobs()
        attempts = tables.attempts()
        deliveries = tables.deliveries()
        for job_id in sorted(set(jobs) - set(self.accepted)):
            r.unexpected_jobs += 1
            r.problem("unexpected jobs", f"{job_id} ({jobs[job_id].handler}, {jobs[job_id].status})")
        for job_id, item in self.accepted.items():
            job = jobs.get(job_id)
            counts = r.by_handler.setdefault(item.behaviour.handler, Counter())
            if job is None:
                r.lost += 1
                counts["lost"] += 1
                r.problem("lost", f"{job_id} ({item.filename}): accepted with a 202, no job row")
                continue
            counts[job.status] += 1
            self._judge(job, attempts.get(job_id, []), item)
        self._check_mail(jobs, deliveries)

    def _judge(self, job: JobRow, rows: list[AttemptRow], item: Planned) -> None:
        r = self.report
        b = item.behaviour
        where = f"{job.id} ({b.handler}, {item.parameter!r})"
        counted = [a for a in rows if a.outcome not in UNCOUNTED]
        outcomes = [a.outcome for a in counted]
        r.outcomes.update(str(a.outcome) for a in rows)
        if job.attempts > job.max_attempts or len(counted) > job.max_attempts:
            r.attempts_over_max += 1
            r.problem("attempts", f"{where}: {job.attempts} attempts ({len(counted)} rows) over max "
                                  f"{job.max_attempts}")
        if job.status not in TERMINAL:
            r.stuck += 1
            r.problem("stuck", f"{where}: {job.status} after {job.attempts} attempts {outcomes}")
            return
        if job.handler != b.handler or job.max_attempts != b.max_attempts:
            r.problem("outcome", f"{where}: ran as {job.handler} with max {job.max_attempts}, expected "
                                 f"{b.handler} with max {b.max_attempts}")
            return
        numbers = [a.number for a in counted]
        if numbers != list(range(1, job.attempts + 1)):
            r.problem("attempts", f"{where}: attempts={job.attempts} but the attempt rows are numbered {numbers}")
        for a in counted:
            if a.outcome is None:
                r.problem("attempts", f"{where}: attempt {a.number} of a {job.status} job was left open")
            elif not victim(a) and a.outcome != b.outcome(a.number, item.parameter):
                r.problem("outcome", f"{where}: attempt {a.number} ended {a.outcome} ({a.error_type}), expected "
                                     f"{b.outcome(a.number, item.parameter)}, lost or PoolBroken")
        last = outcomes[-1] if outcomes else None
        if job.status == "processed":
            r.processed += 1
            if b.ends != "processed":
                r.problem("outcome", f"{where}: processed, but this handler never succeeds")
            elif last != "processed":
                r.problem("outcome", f"{where}: processed, but its last attempt ended {last} ({outcomes})")
            elif not isinstance(job.result, dict) or job.result.get("attempt") != job.attempts:
                r.problem("outcome", f"{where}: the stored result {job.result!r} is not attempt {job.attempts}'s")
            return
        r.failed += 1
        if b.ends == "processed":
            # legitimate only when every attempt it had was taken by a worker kill, the last included
            if job.error_type in (WORKER_LOST, POOL_BROKEN) and job.attempts == job.max_attempts and counted and \
                    victim(counted[-1]):
                r.failed_worker_lost += 1
            else:
                r.problem("outcome", f"{where}: failed with {job.error_type} after {job.attempts}/{job.max_attempts}"
                                     f" attempts {outcomes}; only a job whose last attempt a kill took may fail")
            return
        expected = WORKER_LOST if last == "lost" else POOL_BROKEN if counted and victim(counted[-1]) else b.final_error
        if job.attempts != job.max_attempts or job.error_type != expected:
            r.problem("outcome", f"{where}: failed with {job.error_type} after {job.attempts}/{job.max_attempts} "
                                 f"attempts {outcomes}; expected {expected} after {job.max_attempts}")

    def _check_mail(self, jobs: dict[str, JobRow], deliveries: list[DeliveryRow]) -> None:
        r = self.report
        received = self.sink.snapshot()
        times: dict[str, list[float]] = {}
        for item in received:
            times.setdefault(item.message_id, []).append(item.at)
        r.emails_sent = len(times)
        by_job: dict[str, list[DeliveryRow]] = {}
        for row in deliveries:
            by_job.setdefault(row.job_id, []).append(row)
        known = {row.message_id for row in deliveries}
        for message_id in sorted(set(times) - known):
            r.unexpected_emails += 1
            r.problem("unexpected emails", f"{message_id} arrived; no delivery row has it")
        down = (self.smtp_stopped_at, self.smtp_started_at)
        if down[0] is not None and down[1] is not None:
            r.smtp_down = (down[0], down[1])
        for job_id in self.accepted:
            job = jobs.get(job_id)
            rows = by_job.get(job_id, [])
            if job is None or job.status not in TERMINAL:
                r.notes += [f"{job_id} is not terminal but has an email row"] if rows else []
                continue
            r.emails_expected += 1
            wanted = [x for x in rows if x.event == job.status and x.recipient == RECIPIENT and x.run == 1]
            r.extra_emails += max(0, len(rows) - 1)
            if len(rows) != 1 or len(wanted) != 1:
                r.problem("email rows", f"{job_id} ({job.status}): rows {[(x.event, x.recipient, x.run) for x in rows]}"
                                        f", expected one ({job.status}, {RECIPIENT}, 1)")
            for row in rows:
                self._judge_mail(row, times.get(row.message_id, []))

    def _judge_mail(self, row: DeliveryRow, arrivals: list[float]) -> None:
        r = self.report
        where = f"{row.job_id} {row.event} {row.message_id}"
        if len(arrivals) > 1:
            r.duplicate_emails += 1
            r.problem("duplicate emails", f"{where}: received {len(arrivals)} times (row {row.status})")
        if row.status == "uncertain":
            r.uncertain_emails += 1
            r.uncertain_received += bool(arrivals)
            r.problem("uncertain emails (shown, not a pass)",
                      f"{where}: received {len(arrivals)} times; {row.last_error}")
        elif row.status == "failed":
            r.failed_emails += 1
            r.problem("failed emails", f"{where}: {row.last_error}")
        elif row.status not in SETTLED:
            r.unsettled_emails += 1
            r.problem("unsettled emails", f"{where}: still {row.status}, claimed by {self._owner(row.claimed_by)} "
                                          f"(received {len(arrivals)} times); {(row.last_error or '')[:100]}")
        elif not arrivals:
            r.missing_emails += 1
            r.problem("missing emails", f"{where}: marked sent, never received")
        if arrivals:
            delay = min(arrivals) - self._sendable_from(row.created_at, min(arrivals))
            r.max_email_delay = max(r.max_email_delay, delay)
            if delay > self.size.email_window:
                r.late_emails += 1
                r.problem("late emails", f"{where}: arrived {delay:.1f}s after it could first be sent")

    def _owner(self, owner: str | None) -> str:
        """A notifier's id (``host:pid:token``) with the worker process it was in, and whether it was killed."""
        if not owner:
            return "nobody"
        pid = owner.split(":")[-2] if owner.count(":") >= 2 else ""
        for proc in self.every_worker:
            if str(proc.pid) == pid:
                return f"{owner} ({proc.name}, {'killed by the controller' if proc.killed else 'not killed'})"
        return owner

    def _sendable_from(self, created: float, arrived: float) -> float:
        """From when an email made at ``created`` that arrived at ``arrived`` could have been sent: its row's
        creation, or, for one made before the SMTP server came back that arrived after, the server's return."""
        started = self.smtp_started_at
        if started is not None and created < started <= arrived:
            return started
        return created


def run_chaos(size: Size, workdir: Path, *, amqp_url: str | None = None, seed: int | None = None,
              log: Callable[[str], None] = print, **overrides: Any) -> Report:
    """One chaos run on RabbitMQ (``amqp_url``: the real server; the run goes through a proxy in front
    of it) or, without it, on the database as the queue. ``overrides`` change fields of ``size``."""
    if overrides:
        size = replace(size, **overrides)
    return ChaosRun(size, workdir, amqp_url, seed, log).run()
