"""Upload speed: one 512 MiB upload (MB/s and the API's peak RSS growth) beside the disk's own
fsynced write speed, and 1 KiB uploads from 32 clients for 10 s beside a bare FastAPI endpoint.

Run: .venv/bin/python bench/upload.py   (needs `wrk` for the small-upload part: apt-get install wrk)
Every figure is measured in this run; nothing is remembered from an earlier one."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
CHUNK = MiB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def payload_block() -> bytes:
    """1 MiB of CSV-looking text (random digits), so Chute routes it to the CSV handler."""
    import random

    rng = random.Random(7)
    line = lambda: ",".join(str(rng.randrange(10**9)) for _ in range(8)) + "\n"  # noqa: E731
    text = "a,b,c,d,e,f,g,h\n"
    while len(text) < MiB:
        text += line()
    return text.encode()[:MiB]


def disk_speed(folder: Path, size: int, block: bytes) -> float:
    """What `dd bs=1M conv=fdatasync` measures: write the bytes, fdatasync, divide."""
    path = folder / "disk-probe"
    started = time.perf_counter()
    with path.open("wb", buffering=0) as f:
        for _ in range(size // len(block)):
            f.write(block)
        os.fdatasync(f.fileno())
    took = time.perf_counter() - started
    path.unlink()
    return size / took / 1e6


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def reset_peak(pid: int) -> None:
    """Linux 4.0+: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextmanager
def server(kind: str, port: int, workdir: Path, broker: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_")}
    env.update({"CHUTE_VAR_DIR": str(workdir / "var"), "CHUTE_HANDLERS": str(ROOT / "handlers"),
                "CHUTE_MAX_UPLOAD_BYTES": str(2048 * MiB), "CHUTE_LOG_LEVEL": "WARNING",
                "BARE_DIR": str(workdir / "bare"), "CHUTE_QUEUE_PREFIX": f"bench-{os.getpid()}"})
    if broker:
        env["CHUTE_BROKER_URL"] = broker
    if kind == "chute":
        args = [sys.executable, "-m", "chute.cli", "api", "--port", str(port)]
    else:
        args = [sys.executable, "-m", "uvicorn", "bare_app:app", "--app-dir", str(ROOT / "bench"),
                "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(args, env=env, cwd=workdir)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{kind} server did not start") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def big_upload(url: str, size: int, block: bytes) -> float:
    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    with httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        response = client.post(url, files={"file": ("big.csv", _Stream(body()), "text/csv")})
        took = time.perf_counter() - started
    if response.status_code not in (200, 202):
        raise SystemExit(f"{url}: {response.status_code} {response.text[:200]}")
    return took


class _Stream:
    """A file-like object httpx streams from, so the client never holds 512 MiB."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return next(self.chunks, b"")


def wrk(url: str, seconds: int, connections: int, body: bytes) -> tuple[float, float]:
    """(requests/s, p99 ms) from wrk posting the same 1 KiB multipart upload."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    boundary = "chutebenchboundary"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"small.csv\"\r\n"
                 f"Content-Type: text/csv\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"\n'
        f'wrk.body = "{_lua(multipart)}"\n'
    )
    done = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True, check=True)
    script.unlink()
    out = done.stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    value = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rps, value


def _lua(data: bytes) -> str:
    return "".join(f"\\{b:03d}" if b < 32 or b in (34, 92) or b > 126 else chr(b) for b in data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--broker", default="", help="CHUTE_BROKER_URL for Chute (default: embedded)")
    parser.add_argument("--skip-small", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MiB
    block = payload_block()
    workdir = Path(tempfile.mkdtemp(prefix="chute-bench-", dir=ROOT / "var" if (ROOT / "var").exists() else None))
    print(f"# bench/upload.py  size={args.size_mib} MiB  workdir={workdir}  broker={args.broker or 'embedded'}")

    disk = disk_speed(workdir, size, block)
    print(f"disk     sequential write + fdatasync ({args.size_mib} MiB): {disk:8.1f} MB/s")

    results: dict[str, tuple[float, int]] = {}
    for kind, path in (("chute", "/uploads"), ("bare", "/save")):
        port = free_port()
        with server(kind, port, workdir, args.broker) as proc:
            big_upload(f"http://127.0.0.1:{port}{path}", 4 * MiB, block)  # warm up imports and pools
            before, _ = rss_kib(proc.pid)
            reset_peak(proc.pid)
            took = big_upload(f"http://127.0.0.1:{port}{path}", size, block)
            _, peak = rss_kib(proc.pid)
        results[kind] = (size / took / 1e6, peak - before)
        shutil.rmtree(workdir / "var" / "files", ignore_errors=True)
        shutil.rmtree(workdir / "bare", ignore_errors=True)
    for kind, label in (("chute", "chute    POST /uploads (streamed, fsynced)"),
                        ("bare", "baseline FastAPI UploadFile + copy + fsync")):
        mbps, growth = results[kind]
        print(f"{label}: {mbps:8.1f} MB/s  = {mbps / disk:4.2f}x disk   peak RSS growth {growth / 1024:6.1f} MiB")
    print(f"ratio chute/baseline (big upload): {results['chute'][0] / results['bare'][0]:.2f}x")

    if args.skip_small:
        return
    if not shutil.which("wrk"):
        print("small uploads: skipped (install wrk: apt-get install wrk)")
        return
    small = block[:1024]
    rows: dict[str, tuple[float, float]] = {}
    for kind, path in (("chute", "/uploads"), ("bare", "/save"), ("bare-nosync", "/save-nosync")):
        port = free_port()
        with server("chute" if kind == "chute" else "bare", port, workdir, args.broker):
            wrk(f"http://127.0.0.1:{port}{path}", 2, args.connections, small)  # warm up
            rows[kind] = wrk(f"http://127.0.0.1:{port}{path}", args.seconds, args.connections, small)
    for kind, label in (("chute", "chute    1 KiB uploads (stored, fsynced, recorded, published)"),
                        ("bare", "baseline 1 KiB, bare FastAPI saving with fsync"),
                        ("bare-nosync", "baseline 1 KiB, bare FastAPI saving without fsync")):
        rps, p99 = rows[kind]
        print(f"{label}: {rps:8.1f} req/s  p99 {p99:7.1f} ms")
    print(f"ratio chute/baseline (small, fsync): {rows['chute'][0] / rows['bare'][0]:.2f}x   "
          f"(vs no-fsync baseline: {rows['chute'][0] / rows['bare-nosync'][0]:.2f}x)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
