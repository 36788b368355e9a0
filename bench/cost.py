"""Cost per job: Chute beside the Celery-plus-FastAPI glue a user would write, in CPU per job.

Each side runs as its real processes, each its own process tree, measured with psutil (user + system
CPU of the tree, reaped children included), and RabbitMQ's beam.smp the same way:

  chute-db     `chute api` + `chute worker`, the database as the queue (CHUTE_BROKER_URL unset)
  chute-amqp   the same two with CHUTE_BROKER_URL=amqp://…  (quorum queues, Chute's default)
  baseline     bench/baseline: uvicorn running a FastAPI `UploadFile` endpoint (file copied + fsynced,
               SQLite row inserted, Celery task sent) + `celery worker --pool prefork -c 2`
               (acks_late, a classic queue: Celery's default) whose task marks the row processed

(`--serve` runs Chute as the one-process `chute serve` instead: then the API tree is everything.)
The same client drives each: a small asyncio HTTP/1.1 client, keep-alive, 1 KiB text files, each
upload polled with GET /jobs/{id} every --poll-ms until processed. First an open loop at a fixed
--rate for --jobs uploads, then a closed loop of --clients clients for --closed-seconds. The sides
are interleaved over --rounds rounds, each run with fresh processes, database and folders.

Printed per side: CPU ms per job of each tree (API, worker, RabbitMQ; the client for information),
their total, the 202→processed latency p50/p99 (open loop, resolution: the poll interval), the GETs
per job, and closed-loop jobs/s and CPU per job; then the medians over rounds and Chute/baseline ratios.
RabbitMQ is counted in the totals of the sides that use it only (on chute-db its idle CPU is shown
in brackets). The two cores are shared, so wall-clock figures are noisy; CPU per job much less so.

`--profile DIR`: instead, attach `py-spy record --subprocesses --gil` to Chute's API and worker for
the open loop alone (one run per Chute source) and print the top costs (bench/pyspy_summary.py).
`--per-request N`: instead, the API tree's CPU per POST and per GET, each measured alone (N of each,
--per-request-clients at a time), and the worker tree's CPU per job for those POSTs.

Run: .venv/bin/python bench/cost.py [--rounds 3] [--jobs 1000] [--rate 100] [--clients 32]
     [--closed-seconds 6] [--poll-ms 20] [--sides chute-db,chute-amqp,baseline] [--serve]
     [--profile var/profile [--jobs 2000 --profile-rate 200]] [--per-request 1000 [--per-request-clients 1]]
Needs RabbitMQ (--broker) and the bench extra (celery, psutil; py-spy for --profile)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "bench" / "baseline"
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
SIDES = ("chute-db", "chute-amqp", "baseline")
LABELS = {"chute-db": "chute (database queue)", "chute-amqp": "chute (RabbitMQ)",
          "baseline": "baseline (FastAPI+Celery)"}
#: the suffix of a side that runs the Chute of ``--before``
BEFORE = "-before"
LABELS.update({f"{side}{BEFORE}": f"{LABELS[side]}, before" for side in SIDES[:2]})
BOUNDARY = "costbenchboundary7f3a"
FILLER = b"the quick brown fox jumps over the lazy dog 0123456789\n" * 20
JOB_TIMEOUT = 120.0


# --- processes ---------------------------------------------------------------------------------------
class Procs:
    """Every process this bench starts, each the leader of its own process group (so a Ctrl-C at the
    terminal reaches only the bench, which then stops them in order)."""

    live: list[subprocess.Popen[bytes]] = []

    @classmethod
    def start(cls, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        cls.live.append(proc)
        return proc

    @classmethod
    def stop(cls, procs: list[subprocess.Popen[bytes]], timeout: float = 30.0,
             sig: signal.Signals = signal.SIGTERM) -> None:
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, sig)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
            _signal_group(proc, signal.SIGKILL)  # whatever it left behind in its group (pool children)
            if proc in cls.live:
                cls.live.remove(proc)

    @classmethod
    def stop_all(cls) -> None:
        cls.stop(list(cls.live), timeout=15)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants, plus the children each has
    reaped (so a pool child that exits mid-run still counts)."""
    return sum(tree_cpu_split(pid))


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the tree, as ``tree_cpu`` counts them."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    user = system = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user += t.user + t.children_user
        system += t.system + t.children_system
    return user, system


def rabbit_pid() -> int | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "beam.smp":
            return int(proc.pid)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the sides -------------------------------------------------------------------------------------
@dataclass
class Running:
    side: str
    port: int
    workdir: Path
    trees: dict[str, subprocess.Popen[bytes]]  # "api", "worker"
    queues: list[str] = field(default_factory=list)  # to delete from RabbitMQ afterwards
    exchanges: list[str] = field(default_factory=list)

    @property
    def uses_rabbit(self) -> bool:
        return not self.side.startswith("chute-db")

    def cpu(self) -> dict[str, float]:
        """CPU seconds by tree, and (as ``<tree>.sys``) the system part of each."""
        out = {}
        for name, proc in self.trees.items():
            user, system = tree_cpu_split(proc.pid)
            out[name], out[f"{name}.sys"] = user + system, system
        return out

    def log_tail(self, lines: int = 25) -> str:
        out = []
        for log in sorted(self.workdir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} ---\n" + "\n".join(text))
        return "\n".join(out)


def clean_env() -> dict[str, str]:
    """The bench's environment without any CHUTE_ setting (API keys and the like are not ours to set)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CHUTE_", "BASELINE_"))}


def start(side: str, args: argparse.Namespace) -> Running:
    workdir = Path(tempfile.mkdtemp(prefix=f"chute-cost-{side}-"))
    port = free_port()
    py = sys.executable
    tag = uuid.uuid4().hex[:8]
    conc = str(args.concurrency)

    if side.startswith("chute"):
        env = clean_env()
        env.update(CHUTE_VAR_DIR=str(workdir / "var"), CHUTE_HANDLERS=str(ROOT / "bench" / "handlers"),
                   CHUTE_TEMPLATES=str(ROOT / "notifications" / "templates"), CHUTE_QUEUE_PREFIX=f"cost-{tag}")
        if args.log_level:
            env["CHUTE_LOG_LEVEL"] = args.log_level
        if side.endswith(BEFORE):  # the Chute of another checkout, measured in the same run
            env["PYTHONPATH"] = str(args.before / "platform")
        queues = []
        if side.startswith("chute-amqp"):
            env["CHUTE_BROKER_URL"] = args.broker
            queues = [f"cost-{tag}.work", f"cost-{tag}.dead"]
        chute = [py, "-m", "chute.cli"]
        if args.serve:
            trees = {"api": Procs.start([*chute, "serve", "--port", str(port), "--concurrency", conc], env, workdir,
                                        workdir / "serve.log")}
        else:
            trees = {"api": Procs.start([*chute, "api", "--port", str(port)], env, workdir, workdir / "api.log"),
                     "worker": Procs.start([*chute, "worker", "--concurrency", conc], env, workdir,
                                           workdir / "worker.log")}
        running = Running(side, port, workdir, trees, queues)
    else:
        queue = f"cost-baseline-{tag}"
        env = clean_env()
        env.update(BASELINE_BROKER=args.broker, BASELINE_QUEUE=queue, BASELINE_DB=str(workdir / "baseline.db"),
                   BASELINE_FILES=str(workdir / "files"), PYTHONPATH=str(BASELINE))
        if args.baseline_quorum:
            env["BASELINE_QUORUM"] = "1"
        api = Procs.start([py, "-m", "uvicorn", "app:app", "--app-dir", str(BASELINE), "--host", "127.0.0.1",
                           "--port", str(port), "--log-level", "warning"], env, workdir, workdir / "api.log")
        worker = Procs.start([py, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork", "-c", conc,
                              "-Q", queue, "-l", "info", "--without-gossip", "--without-mingle",
                              "--without-heartbeat"], env, workdir, workdir / "worker.log")
        running = Running(side, port, workdir, {"api": api, "worker": worker}, [queue], [queue])
    return running


def stop(running: Running, args: argparse.Namespace) -> None:
    Procs.stop(list(running.trees.values()))
    if running.queues and not args.keep:
        try:
            from kombu.connection import Connection

            with Connection(args.broker, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
                channel = conn.default_channel
                for name in running.queues:
                    channel.queue_delete(name)
                for name in running.exchanges:
                    channel.exchange_delete(name)
        except Exception as exc:
            print(f"  (could not delete the RabbitMQ queues {running.queues}: {exc})", file=sys.stderr)
    if args.keep:
        print(f"  kept {running.workdir}", file=sys.stderr)
    else:
        shutil.rmtree(running.workdir, ignore_errors=True)


@contextmanager
def side_running(side: str, args: argparse.Namespace) -> Iterator[Running]:
    running = start(side, args)
    try:
        wait_healthy(running)
        yield running
    except BaseException:
        if args.verbose:
            print(running.log_tail(), file=sys.stderr)
        raise
    finally:
        stop(running, args)


def wait_healthy(running: Running, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in running.trees.items():
            if proc.poll() is not None:
                raise SystemExit(f"{running.side}: the {name} process exited with {proc.returncode} at start:\n"
                                 f"{running.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", running.port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{running.side}: the API did not answer /healthz in {timeout:g}s:\n{running.log_tail()}")
        time.sleep(0.1)


# --- the client ------------------------------------------------------------------------------------
class Http:
    """HTTP/1.1 keep-alive connections to one server, reused: a client far cheaper than httpx."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.host = f"Host: 127.0.0.1:{port}\r\n".encode()

    async def call(self, request: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            reused = bool(self.idle) and attempt == 0
            reader, writer = self.idle.pop() if reused else await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(request)
                status, body, keep = await _response(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                if reused:  # the server closed an idle keep-alive connection: try a fresh one
                    self.close()  # the others may be as old
                    continue
                raise
            except BaseException:
                writer.close()
                raise
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()
            return status, body
        raise ConnectionError("the server closed the connection twice")

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()

    def post(self, body: bytes) -> bytes:
        return (b"POST /uploads HTTP/1.1\r\n" + self.host +
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode() + body)

    def get(self, job_id: str) -> bytes:
        return f"GET /jobs/{job_id} HTTP/1.1\r\n".encode() + self.host + b"\r\n"


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    line = await reader.readline()
    if not line:
        raise ConnectionError("closed before the status line")
    status = int(line.split(None, 2)[1])
    length, keep, chunked = 0, True, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            keep = b"close" not in value.lower()
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if not chunked:
        return status, await reader.readexactly(length), keep
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return status, bytes(body), keep
        body += await reader.readexactly(size + 2)
        del body[-2:]


def upload_body(i: int) -> bytes:
    """A 1 KiB text file of its own (no two uploads alike), as multipart/form-data."""
    text = (f"upload {i:010d} {uuid.uuid4().hex}\n".encode() + FILLER)[:1023] + b"\n"
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"note-{i}.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\n").encode() + text + f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclass
class Done:
    sent: float = 0.0
    accepted: float = 0.0  # the 202 arrived
    processed: float = 0.0  # a GET saw it processed
    gets: int = 0
    error: str = ""


async def one_job(http: Http, i: int, poll: float) -> Done:
    loop = asyncio.get_running_loop()
    done = Done(sent=loop.time())
    try:
        status, body = await http.call(http.post(upload_body(i)))
        done.accepted = loop.time()
        if status != 202:
            done.error = f"POST {status}: {body[:200]!r}"
            return done
        job_id = json.loads(body)["id"]
        while True:
            await asyncio.sleep(poll)
            status, body = await http.call(http.get(job_id))
            done.gets += 1
            if status != 200:
                done.error = f"GET {status}: {body[:200]!r}"
                return done
            state = json.loads(body)["status"]
            if state == "processed":
                done.processed = loop.time()
                return done
            if state in ("failed", "cancelled"):
                done.error = f"job {job_id} {state}: {body[:300]!r}"
                return done
            if loop.time() - done.accepted > JOB_TIMEOUT:
                done.error = f"job {job_id} still {state} after {JOB_TIMEOUT:g}s"
                return done
    except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
        done.error = f"{type(exc).__name__}: {exc}"
        return done


async def open_loop(http: Http, jobs: int, rate: float, poll: float, first: int) -> tuple[list[Done], float]:
    """``jobs`` uploads at ``rate`` a second, each started on its own schedule whatever the others do."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = []
    for i in range(jobs):
        wait = started + i / rate - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one_job(http, first + i, poll)))
    sent_for = loop.time() - started
    return list(await asyncio.gather(*tasks)), sent_for


async def closed_loop(http: Http, clients: int, seconds: float, poll: float, first: int) -> tuple[list[Done], float]:
    """``clients`` clients, each uploading the next file once the last is processed, for ``seconds``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + seconds
    counter = iter(range(first, first + 10**9))
    results: list[Done] = []

    async def client() -> None:
        while loop.time() < deadline:
            done = await one_job(http, next(counter), poll)
            results.append(done)
            if done.error:
                return

    await asyncio.gather(*(client() for _ in range(clients)))
    ok = [d for d in results if not d.error]
    last = max((d.processed for d in ok), default=loop.time())
    return results, last - started


# --- measuring -------------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Meter:
    """CPU seconds of every tree of a side, RabbitMQ's and this process's (the client), between two points."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.rabbit = rabbit_pid()
        self.me = psutil.Process()

    def read(self) -> dict[str, float]:
        cpu = self.running.cpu()
        cpu["rabbit"] = tree_cpu(self.rabbit) if self.rabbit else float("nan")
        t = self.me.cpu_times()
        cpu["client"] = t.user + t.system
        return cpu


@dataclass
class Phase:
    """One phase's figures: CPU ms per job by tree, latencies in ms, rates."""

    jobs: int
    errors: list[str]
    cpu_ms: dict[str, float]  # per job: api, worker, rabbit, client
    total_ms: float  # api + worker (+ rabbit when the side uses it)
    p50: float
    p99: float
    post_p50: float
    post_p99: float
    gets: float
    rate: float  # open loop: uploads/s sent; closed loop: jobs/s processed


def phase(running: Running, before: dict[str, float], after: dict[str, float], done: list[Done],
          seconds: float) -> Phase:
    ok = [d for d in done if not d.error]
    n = max(1, len(ok))
    cpu = {k: 1000 * (after[k] - before[k]) / n for k in after}
    total = sum(cpu[k] for k in running.trees) + (cpu["rabbit"] if running.uses_rabbit else 0.0)
    lat = [1000 * (d.processed - d.accepted) for d in ok]
    post = [1000 * (d.accepted - d.sent) for d in ok]
    return Phase(len(ok), [d.error for d in done if d.error], cpu, total, pct(lat, 50), pct(lat, 99),
                 pct(post, 50), pct(post, 99), sum(d.gets for d in ok) / n, len(done) / seconds if seconds else 0.0)


async def drive(running: Running, args: argparse.Namespace, profile: Path | None = None) -> dict[str, Phase]:
    """Warm up, then the open loop and (unless profiling) the closed loop. ``profile``: py-spy is
    attached to each tree for the open loop alone (not the start-up, not the warm-up)."""
    http = Http(running.port)
    meter = Meter(running)
    poll = args.poll_ms / 1000
    spies: list[subprocess.Popen[bytes]] = []
    try:
        warm = list(await asyncio.gather(*(one_job(http, i, poll) for i in range(8))))  # imports, pools
        warm += (await open_loop(http, args.warmup, 50, poll, 100))[0]
        errors = [d.error for d in warm if d.error]
        if errors:
            raise SystemExit(f"{running.side}: the warm-up failed: {errors[0]}\n{running.log_tail()}")
        if profile is not None:
            spies = start_spies(running, args, profile)
        out: dict[str, Phase] = {}
        before = meter.read()
        done, sent_for = await open_loop(http, args.jobs, args.rate, poll, 10_000)
        after = meter.read()
        out["open"] = phase(running, before, after, done, sent_for)
        if spies:
            stop_spies(spies)
            spies = []
            return out
        if args.closed_seconds > 0:
            http.close()
            before = meter.read()
            done, took = await closed_loop(http, args.clients, args.closed_seconds, poll, 1_000_000)
            after = meter.read()
            out["closed"] = phase(running, before, after, done, took)
            out["closed"].rate = out["closed"].jobs / took
        return out
    finally:
        http.close()
        if spies:
            stop_spies(spies)


async def per_request(running: Running, args: argparse.Namespace) -> dict[str, float]:
    """The API tree's CPU per request, each kind alone: ``--per-request`` POSTs (``--per-request-clients``
    at a time, not polled), then as many GETs of one processed job. Also the worker tree's CPU per job
    for those POSTs."""
    http = Http(running.port)
    meter = Meter(running)
    n = args.per_request
    try:
        warm = list(await asyncio.gather(*(one_job(http, i, 0.02) for i in range(8))))
        warm += (await open_loop(http, args.warmup, 50, 0.02, 100))[0]
        failed = next((d.error for d in warm if d.error), None)
        if failed:
            raise SystemExit(f"{running.side}: the warm-up failed: {failed}")
        ids: list[str] = []
        counter = iter(range(10_000, 10_000 + n))

        async def poster() -> None:
            for i in counter:
                status, body = await http.call(http.post(upload_body(i)))
                if status != 202:
                    raise SystemExit(f"POST {status}: {body[:200]!r}")
                ids.append(json.loads(body)["id"])

        before = meter.read()
        await asyncio.gather(*(poster() for _ in range(args.per_request_clients)))
        while True:  # every job processed, so the worker's share is whole
            _, body = await http.call(http.get(ids[-1]))
            if json.loads(body)["status"] == "processed":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        after = meter.read()
        post_api = 1000 * (after["api"] - before["api"]) / n
        worker = 1000 * (after.get("worker", float("nan")) - before.get("worker", float("nan"))) / n
        job = ids[0]
        gets = iter(range(n))

        async def getter() -> None:
            for _ in gets:
                status, body = await http.call(http.get(job))
                if status != 200:
                    raise SystemExit(f"GET {status}: {body[:200]!r}")

        before = meter.read()
        await asyncio.gather(*(getter() for _ in range(args.per_request_clients)))
        after = meter.read()
        return {"post": post_api, "get": 1000 * (after["api"] - before["api"]) / n, "worker": worker}
    finally:
        http.close()


def start_spies(running: Running, args: argparse.Namespace, folder: Path) -> list[subprocess.Popen[bytes]]:
    spy = str(Path(sys.executable).parent / "py-spy")
    spies = []
    for name, proc in running.trees.items():
        out = folder / f"{running.side}-{'serve' if args.serve else name}.txt"
        gil = ["--gil"] if args.profile_gil else []
        spies.append(Procs.start([spy, "record", "--pid", str(proc.pid), "--subprocesses", "--threads",
                                  "--nonblocking", *gil, "--rate", str(args.profile_rate), "--format", "raw",
                                  "-o", str(out)], os.environ.copy(), folder, folder / f"{running.side}-py-spy.log"))
    time.sleep(1.5)  # attached before the load starts
    return spies


def stop_spies(spies: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT is py-spy's Ctrl-C: it stops sampling and writes its file."""
    Procs.stop(spies, timeout=60, sig=signal.SIGINT)


# --- printing --------------------------------------------------------------------------------------
def fmt_run(side: str, r: dict[str, Phase], serve: bool) -> str:
    o = r["open"]
    rabbit = f"{o.cpu_ms['rabbit']:5.2f}" if not side.startswith("chute-db") else f"({o.cpu_ms['rabbit']:.2f})"
    worker = f"{o.cpu_ms['worker']:5.2f}" if "worker" in o.cpu_ms else "  (in API)" if serve else "  -"
    line = (f"  {side:<10} open {o.rate:5.1f}/s: API {o.cpu_ms['api']:5.2f}  worker {worker}  rabbit {rabbit}"
            f"  = {o.total_ms:5.2f} ms/job  (client {o.cpu_ms['client']:4.2f})  GET/job {o.gets:4.1f}"
            f"  202→processed p50 {o.p50:6.1f} p99 {o.p99:6.1f} ms  POST p50 {o.post_p50:5.1f} p99 {o.post_p99:6.1f}")
    if "closed" in r:
        c = r["closed"]
        line += (f"\n  {'':<10} closed: {c.rate:6.1f} jobs/s  API {c.cpu_ms['api']:5.2f}  = {c.total_ms:5.2f} ms/job"
                 f"  GET/job {c.gets:4.1f}  202→processed p50 {c.p50:6.1f} p99 {c.p99:6.1f} ms")
    for name, ph in r.items():
        if ph.errors:
            line += f"\n  {'':<10} {name}: {len(ph.errors)} failed, first: {ph.errors[0]}"
    return line


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def summary(results: dict[str, list[dict[str, Phase]]], args: argparse.Namespace) -> None:
    print(f"\n== medians over {args.rounds} round(s); CPU in ms per job (open loop at {args.rate:g}/s), "
          "latency in ms ==")
    head = (f"{'':<27} {'API':>6} {'worker':>7} {'rabbit':>7} {'total':>7} {'client':>7} {'GET/job':>7}"
            f" {'p50':>7} {'p99':>7} | {'closed jobs/s':>13} {'CPU/job':>7} {'GET/job':>7} {'p50':>7} {'p99':>7}")
    print(head)
    rows: dict[str, dict[str, float]] = {}
    for side, runs in results.items():
        o = [r["open"] for r in runs]
        c = [r["closed"] for r in runs if "closed" in r]
        row = {"api": med([p.cpu_ms["api"] for p in o]),
               "worker": med([p.cpu_ms.get("worker", float("nan")) for p in o]),
               "rabbit": med([p.cpu_ms["rabbit"] for p in o]), "total": med([p.total_ms for p in o]),
               "client": med([p.cpu_ms["client"] for p in o]), "gets": med([p.gets for p in o]),
               "p50": med([p.p50 for p in o]), "p99": med([p.p99 for p in o]),
               "jps": med([p.rate for p in c]), "ccpu": med([p.total_ms for p in c]), "cgets": med([p.gets for p in c]),
               "cp50": med([p.p50 for p in c]), "cp99": med([p.p99 for p in c])}
        rows[side] = row
        rabbit = f"{row['rabbit']:7.2f}" if not side.startswith("chute-db") else f"({row['rabbit']:.2f})".rjust(7)
        worker = f"{row['worker']:7.2f}" if row["worker"] == row["worker"] else "(in API)".rjust(7)
        print(f"{LABELS[side]:<27} {row['api']:6.2f} {worker} {rabbit} {row['total']:7.2f}"
              f" {row['client']:7.2f} {row['gets']:7.1f} {row['p50']:7.1f} {row['p99']:7.1f} |"
              f" {row['jps']:13.1f} {row['ccpu']:7.2f} {row['cgets']:7.1f} {row['cp50']:7.1f} {row['cp99']:7.1f}")
        spread = [p.total_ms for p in o]
        if len(spread) > 1:
            rows[side]["spread"] = max(spread) - min(spread)
    if "baseline" not in rows:
        return
    b = rows["baseline"]
    print("\nratios chute/baseline (lower CPU and latency is better, higher jobs/s is better):")
    for side in ("chute-db", "chute-amqp"):
        if side not in rows:
            continue
        r = rows[side]
        split = r["worker"] == r["worker"]  # not NaN: a worker tree of its own
        trees = (f"(API {r['api'] / b['api']:4.2f}x, worker {r['worker'] / b['worker']:4.2f}x)" if split
                 else f"(API+worker vs API+worker {r['api'] / (b['api'] + b['worker']):4.2f}x)")
        print(f"  {LABELS[side]:<25} total CPU/job {r['total'] / b['total']:5.2f}x  {trees}"
              f"   closed jobs/s {r['jps'] / b['jps']:5.2f}x"
              f"   closed CPU/job {r['ccpu'] / b['ccpu']:5.2f}x   202→processed p50 {r['p50'] / b['p50']:5.2f}x"
              f" p99 {r['p99'] / b['p99']:5.2f}x")
    print("  targets (issue 11): total CPU/job ≤ 0.6x on RabbitMQ and lower on the database; closed jobs/s ≥ 1.5x")
    if any(side.endswith(BEFORE) for side in rows):
        print("\nratios this checkout / --before (lower CPU is better):")
        for side in ("chute-db", "chute-amqp"):
            if side in rows and side + BEFORE in rows:
                r, was = rows[side], rows[side + BEFORE]
                print(f"  {LABELS[side]:<25} total CPU/job {r['total']:6.2f} / {was['total']:6.2f} = "
                      f"{r['total'] / was['total']:5.2f}x   API {r['api'] / was['api']:5.2f}x   "
                      f"worker {r['worker'] / was['worker']:5.2f}x   closed jobs/s {r['jps'] / was['jps']:5.2f}x")


# --- main ------------------------------------------------------------------------------------------
def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1000, help="uploads in the open loop")
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop uploads per second")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--closed-seconds", type=float, default=6.0, help="closed-loop length (0: skip it)")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="GET /jobs/{id} every this many ms")
    parser.add_argument("--warmup", type=int, default=50, help="uploads before measuring, at 50/s")
    parser.add_argument("--concurrency", type=int, default=2, help="chute worker --concurrency, celery -c")
    parser.add_argument("--sides", default=",".join(SIDES), help="which of " + ", ".join(SIDES))
    parser.add_argument("--broker", default=BROKER)
    parser.add_argument("--serve", action="store_true", help="run Chute as one `chute serve` process")
    parser.add_argument("--log-level", default="", help="CHUTE_LOG_LEVEL (default: unset, Chute's INFO)")
    parser.add_argument("--baseline-quorum", action="store_true", help="Celery on a quorum queue too")
    parser.add_argument("--profile", type=Path, help="profile Chute with py-spy into this folder instead")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--profile-all-threads", dest="profile_gil", action="store_false",
                        help="sample every running thread (waits in fsync show up) instead of py-spy --gil")
    parser.add_argument("--per-request", type=int, default=0, metavar="N",
                        help="instead: the API's CPU per POST and per GET, N of each, per side and round")
    parser.add_argument("--per-request-clients", type=int, default=8, metavar="C", help="concurrent clients for it")
    parser.add_argument("--before", type=Path, help="also run the Chute of this checkout (a git worktree of an "
                        "older commit), on the same sides, interleaved, and print this/before ratios")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders and queues")
    parser.add_argument("--verbose", action="store_true", help="print the servers' logs on failure")
    args = parser.parse_args()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(sides) - set(SIDES)
    if args.before is not None:
        sides += [f"{side}{BEFORE}" for side in sides if side.startswith("chute")]
    if unknown:
        parser.error(f"unknown side(s) {', '.join(sorted(unknown))}; choose from {', '.join(SIDES)}")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        if args.profile:
            profile(args, [s for s in sides if s.startswith("chute")])
        elif args.per_request:
            requests(args, sides)
        else:
            bench(args, sides)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping what was started", file=sys.stderr)
        sys.exit(130)
    finally:
        Procs.stop_all()


def bench(args: argparse.Namespace, sides: list[str]) -> None:
    rabbit = rabbit_pid()
    print(f"# bench/cost.py  rounds={args.rounds}  open loop {args.jobs} uploads at {args.rate:g}/s  "
          f"closed loop {args.clients} clients x {args.closed_seconds:g}s  poll {args.poll_ms:g} ms  "
          f"1 KiB text files  concurrency {args.concurrency}  chute {'serve' if args.serve else 'api + worker'}  "
          f"broker {args.broker.split('@')[-1]}  RabbitMQ pid {rabbit or 'not found'}  cores {os.cpu_count()}")
    results: dict[str, list[dict[str, Phase]]] = {s: [] for s in sides}
    started = time.monotonic()
    for n in range(1, args.rounds + 1):
        print(f"round {n}:", flush=True)
        for side in sides:
            with side_running(side, args) as running:
                r = asyncio.run(drive(running, args))
            results[side].append(r)
            print(fmt_run(side, r, args.serve), flush=True)
    summary(results, args)
    print(f"\n(took {time.monotonic() - started:.0f}s)")


def requests(args: argparse.Namespace, sides: list[str]) -> None:
    print(f"# bench/cost.py --per-request {args.per_request}: API CPU ms per request "
          f"({args.per_request_clients} concurrent clients), rounds={args.rounds}")
    got: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for n in range(1, args.rounds + 1):
        for side in sides:
            with side_running(side, args) as running:
                r = asyncio.run(per_request(running, args))
            got[side].append(r)
            print(f"  round {n} {side:<10} API per POST {r['post']:5.2f} ms   per GET {r['get']:5.2f} ms   "
                  f"worker per job {r['worker']:5.2f} ms", flush=True)
    print("medians:")
    for side, runs in got.items():
        print(f"  {LABELS[side]:<27} API per POST {med([r['post'] for r in runs]):5.2f} ms   per GET "
              f"{med([r['get'] for r in runs]):5.2f} ms   worker per job {med([r['worker'] for r in runs]):5.2f} ms")


def profile(args: argparse.Namespace, sides: list[str]) -> None:
    from pyspy_summary import report

    if not (Path(sys.executable).parent / "py-spy").exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    args.profile.mkdir(parents=True, exist_ok=True)
    for side in sides:
        print(f"# profiling {side}: open loop {args.jobs} uploads at {args.rate:g}/s, py-spy at "
              f"{args.profile_rate}/s into {args.profile}", flush=True)
        with side_running(side, args) as running:
            r = asyncio.run(drive(running, args, profile=args.profile))
        o = r["open"]
        split = "  ".join(f"{name}: {o.cpu_ms[name]:.2f} ms/job, {100 * o.cpu_ms[name + '.sys'] / o.cpu_ms[name]:.0f}% "
                          "of it system time" for name in running.trees)
        print(fmt_run(side, r, args.serve) + f"\n  {split}\n  (py-spy attached, sampling on these two cores: the "
              "CPU figures above include its disturbance)")
        for name in ("serve",) if args.serve else ("api", "worker"):
            path = args.profile / f"{side}-{name}.txt"
            if path.exists():
                tree = "api" if name == "serve" else name
                print(report(path, rate=args.profile_rate, jobs=r["open"].jobs, cpu_ms=o.cpu_ms[tree]))
            else:
                print(f"(no profile written at {path})")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
