"""Summarise a py-spy raw (collapsed-stack) profile of Chute: where each process's samples go.

Each process gets a table of costs (a sample belongs to the first rule whose patterns all match a
frame of its stack, so the shares add up to 100%) and its top self (leaf) frames. With py-spy's
``--gil`` (bench/cost.py's default) a sample is a moment a thread held the GIL, so waits in fsync, the
network or SQLite's I/O are not in it, but C code that keeps the GIL (uvloop, httptools) is. The ms
column is the share of psutil's CPU figure for the tree when ``--cpu-ms`` is given (bench/cost.py
passes it), else samples ÷ rate ÷ jobs (more than CPU time on an oversubscribed machine).

Run: .venv/bin/python bench/pyspy_summary.py PROFILE.txt [--rate 100] [--jobs 1000] [--cpu-ms 7.5]
(bench/cost.py --profile DIR writes the profiles and prints this for each.)"""

# ruff: noqa: E501  (the rule table reads best one rule a line)
from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

Rule = tuple[str, tuple[str, ...]]

LOGGING = r"logging/__init__\.py"
#: the upload's own frames, and the executor threads ``asyncio.to_thread`` runs ``Ingest.persist`` on
POST = r"chute/api/(uploads|ingest)\.py|concurrent/futures/thread\.py"
#: the job route, what FastAPI does for it alone (dependencies, response model) and the AnyIO threads
#: its sync endpoint runs on (nothing else in the API is a sync endpoint on this load)
GET = (r"chute/api/jobs\.py|serialize_response|solve_dependencies|_run_sync_endpoint|run_in_threadpool|"
       r"AnyIO worker thread|anyio/to_thread\.py")

API: list[Rule] = [
    ("POST /uploads: logging (event=accepted line)", (POST, LOGGING)),
    ("POST /uploads: persist: file fsync + close (FileWriter.finish)", (POST, r"FileWriter\.finish", r"^(?!.*DirSync)")),
    ("POST /uploads: persist: directory fsync (DirSync)", (POST, r"DirSync|fsync_dir")),
    ("POST /uploads: persist: INSERT + commit (GroupCommit, JobService.insert)", (POST, r"GroupCommit|JobService\.insert")),
    ("POST /uploads: persist: the rest (Job(**row), the thread hop)", (POST, r"Ingest\.persist|_persist|to_thread")),
    ("POST /uploads: 202 body (JobOut.of + model_dump_json)", (POST, r"JobOut|model_dump|pydantic")),
    ("POST /uploads: sniff + route (sniff.detect, registry.route)", (POST, r"chute/sniff\.py|choose_handler|chute/registry\.py|filetype/")),
    ("POST /uploads: file open/write/hash (Storage.writer, FileWriter.write)", (POST, r"Storage\.writer|FileWriter\.(write|__init__)")),
    ("POST /uploads: multipart parsing (python_multipart + _Parts callbacks)", (POST, r"python_multipart|_Parts|receive \(|_chunks|boundary_of")),
    ("POST /uploads: metrics (prometheus_client)", (POST, r"prometheus_client")),
    ("POST /uploads: relay.send (outbox hand-off)", (POST, r"chute/relay\.py")),
    ("POST /uploads: API key check (require_key)", (POST, r"require_key")),
    ("POST /uploads: the rest of the handler (job_row, clean_filename, Response)", (POST,)),
    ("GET /jobs/{id}: logging", (GET, LOGGING)),
    ("GET /jobs/{id}: job row read (JobService.get, ORM)", (GET, r"JobService\.get ")),
    ("GET /jobs/{id}: notifications read (deliveries.for_job)", (GET, r"for_job")),
    ("GET /jobs/{id}: artifacts listing (storage.list_artifacts)", (GET, r"list_artifacts")),
    ("GET /jobs/{id}: response (JobOut.of, FastAPI serialize_response, pydantic)",
     (GET, r"JobOut|NotificationOut|serialize_response|jsonable_encoder|pydantic|model_dump")),
    ("GET /jobs/{id}: FastAPI dependencies (solve_dependencies: require_key, runtime, params)",
     (GET, r"solve_dependencies|require_key")),
    ("GET /jobs/{id}: thread-pool hop (anyio: hand-off, worker thread wake-up)",
     (GET, r"anyio|run_in_threadpool|_run_sync_endpoint")),
    ("GET /jobs/{id}: the rest", (GET,)),
    ("relay thread: publish to RabbitMQ (kombu/amqp, confirms)", (r"chute-relay|chute/relay\.py", r"chute/broker\.py|kombu/|amqp/")),
    ("relay thread: sweep (expire_leases, due)", (r"chute-relay|chute/relay\.py", r"sweep_once|expire_leases|JobService\.due")),
    ("relay thread: the rest (queue take, linger)", (r"chute-relay|chute/relay\.py",)),
    ("logging elsewhere", (LOGGING,)),
    ("FastAPI's built-in telemetry (an OpenTelemetry provider check per request; the baseline's too)",
     (r"NativeTelemetry\.|get_tracer_provider|_get_request_telemetry|opentelemetry|trace/__init__\.py",)),
    ("middleware: KeyGate itself (API key gate)", (r"leaf:KeyGate|leaf:chute/api/deps\.py",)),
    ("routing + middleware, shared by POST and GET (starlette, fastapi)", (r"leaf:starlette/|leaf:fastapi/",)),
    ("HTTP server: uvicorn/httptools protocol", (r"leaf:uvicorn/|leaf:httptools|leaf:chute/api/server\.py",)),
    ("event loop: uvloop C code (sockets, callbacks), asyncio", (r"leaf:Runner\.run \(asyncio/|leaf:asyncio/",)),
]

TURN = r"record_and_claim"
WORKER: list[Rule] = [
    ("logging (event=start / event=attempt lines)", (LOGGING,)),
    ("turn: COMMIT", (TURN, r"\.commit \(|_commit_impl|do_commit")),
    ("turn: mail hook (DeliveryHook)", (TURN, r"DeliveryHook|chute/notify")),
    ("turn: writes (TurnWrites.run: UPDATE/INSERT on the cursor)", (TURN, r"TurnWrites\.run|CursorStatement")),
    ("turn: decisions (lifecycle, TurnWrites bookkeeping, results)",
     (TURN, r"chute/lifecycle\.py|TurnWrites\.(start|move|park|close)|(?<![\w.])_(record|claim) \(|Recorded|Claimed|JobRow")),
    ("turn: session, transaction, pool checkout (open/close)",
     (TURN, r"leaf:sqlalchemy/(orm/session|pool|engine/base|orm/state_changes|event)|sessionmaker|Session\.(__init__|__exit__|close|begin)|"
            r"Pool\.connect|_on_begin|exec_driver_sql|Database\.write")),
    ("turn: log lines built (_log_records, _log_claims, _logfmt)", (TURN, r"_log_records|_log_claims|_logfmt")),
    ("turn: SELECT of the rows (Core compile, execute, row dicts)", (TURN,)),
    ("fetch (database): reserve (probe SELECT, then UPDATE…RETURNING)", (r"JobService\.reserve",)),
    ("fetch (database): next_due (when nothing was due)", (r"next_due",)),
    ("fetch (database): the rest", (r"chute/sources/database\.py",)),
    ("fetch/ack (AMQP source: kombu drain, acks)", (r"chute/sources/amqp\.py",)),
    ("handler round trip: submit (task_for, pebble schedule)", (r"Worker\._after_claim|task_for|ProcessExecutor\.submit",)),
    ("handler round trip: pebble threads (scheduler, message manager: pickle, pipes)", (r"pebble/|multiprocessing/",)),
    ("handler round trip: result collection (ResultQueue, _collect, _outcome)", (r"ResultQueue|Worker\._collect|_outcome",)),
    ("relay thread (sweeps: expire_leases, due)", (r"chute-relay|chute/relay\.py",)),
    ("notifier thread", (r"chute-notifier|chute/notify",)),
    ("lease renewal (heartbeat)", (r"heartbeat|_renew",)),
    ("worker loop, the rest (worker.py)", (r"chute/worker\.py",)),
    ("SQLAlchemy elsewhere", (r"sqlalchemy/",)),
]

CHILD: list[Rule] = [
    ("child: the handler call (runner.run_in_child → noop)", (r"chute/runner\.py|run_in_child",)),
    ("child: pebble worker loop (receive, unpickle, send result)", (r"pebble/|multiprocessing/",)),
]

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def kind(cmd: str) -> str:
    if "spawn_main" in cmd or "multiprocessing" in cmd:
        return "child"
    if "chute.cli worker" in cmd:
        return "worker"
    if "chute.cli serve" in cmd:
        return "serve"
    if "chute.cli api" in cmd:
        return "api"
    return "other"


def rules_for(k: str) -> list[Rule]:
    return {"api": API, "worker": WORKER, "serve": API + WORKER, "child": CHILD}.get(k, [])


def parse(path: Path) -> dict[str, Counter[tuple[str, ...]]]:
    """{process label: Counter(stack frames → samples)}; the thread frame is kept as the first frame."""
    by_process: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        process = "?"
        rest: list[str] = []
        for frame in frames:
            if frame.startswith("process "):
                process, rest = frame, []
            else:
                rest.append(frame)
        by_process[process][tuple(rest)] += int(count)
    return by_process


class _Leaf:
    """A pattern matched against the leaf frame only (``leaf:`` rules)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._re = re.compile(pattern.removeprefix("leaf:").replace("|leaf:", "|"))

    def search(self, text: str) -> bool:
        return self._re.search(text) is not None


def _compile(pattern: str) -> re.Pattern[str] | _Leaf:
    return _Leaf(pattern) if pattern.startswith("leaf:") else re.compile(pattern)


def classify(stack: tuple[str, ...], compiled: list[tuple[str, list[re.Pattern[str] | _Leaf]]]) -> str:
    """The first rule whose every pattern matches some frame (a ``leaf:`` pattern: the last frame)."""
    for label, patterns in compiled:
        if all(p.search(stack[-1]) if p.pattern.startswith("leaf:") else any(p.search(f) for f in stack)
               for p in patterns):
            return label
    return "other"


def short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    return f"{m['func']} ({m['file']}:{m['line']})" if m["line"] else f"{m['func']} ({m['file']})"


def report(path: Path, rate: float, jobs: int, top: int = 10, cpu_ms: float | None = None) -> str:
    """``cpu_ms``: the tree's CPU per job as psutil measured it over the same run; given, each cost is
    shown as its share of that (samples are GIL-held or running time, which on an oversubscribed
    machine is more than CPU time: a preempted thread still holds the GIL)."""
    processes = parse(path)
    everything = sum(sum(stacks.values()) for stacks in processes.values())
    if cpu_ms is not None and everything:
        per_sample, unit = cpu_ms / everything, "CPU ms/job (share of psutil's figure for the tree)"
    else:
        per_sample, unit = 1000 / rate / max(jobs, 1), f"sampled ms/job (samples / {rate:g} Hz / {jobs} jobs)"
    out = [f"\n### {path.name}: {everything} samples at {rate:g}/s over {jobs} jobs; ms column: {unit}"]
    for process, stacks in sorted(processes.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(stacks.values())
        if total == 0:
            continue
        pid, _, cmd = process.partition(":")
        k = kind(cmd)
        compiled = [(label, [_compile(p) for p in pats]) for label, pats in rules_for(k)]
        buckets: Counter[str] = Counter()
        leaves: Counter[str] = Counter()
        for stack, n in stacks.items():
            # the thread name (first frame) takes part in matching, so "chute-relay" rules see it
            buckets[classify(stack, compiled)] += n
            leaves[short(stack[-1]) if len(stack) > 1 else stack[0]] += n
        out.append(f"\n{pid} [{k}] {cmd.strip(chr(34))[:90]}\n  {total} samples = {100 * total / everything:.1f}% of "
                   f"the file, {total * per_sample:.2f} ms/job")
        out.append(f"  {'cost (first matching rule)':<86} {'%':>6} {'ms/job':>7}")
        shown = buckets.most_common(top if k != "serve" else 2 * top)
        for label, n in shown:
            out.append(f"  {label:<86} {100 * n / total:5.1f}% {n * per_sample:7.3f}")
        rest = total - sum(n for _, n in shown)
        if rest:
            out.append(f"  {'(the rest)':<86} {100 * rest / total:5.1f}% {rest * per_sample:7.3f}")
        out.append("  top self frames (where the sample was taken):")
        for frame, n in leaves.most_common(top):
            out.append(f"    {100 * n / total:5.1f}%  {frame[:140]}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--cpu-ms", type=float, help="the tree's CPU ms per job (psutil), to scale the shares by")
    args = parser.parse_args()
    for path in args.profiles:
        print(report(path, args.rate, args.jobs, args.top, args.cpu_ms))


if __name__ == "__main__":
    main()
