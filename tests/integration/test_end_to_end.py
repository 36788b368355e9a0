"""Upload → handler → status, through real parts: uvicorn, RabbitMQ or the embedded broker,
child processes running the handlers, and the `chute` command itself."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from chute.api import create_app
from chute.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@contextmanager
def running_worker(rt: Runtime, concurrency: int = 2) -> Iterator[Any]:
    worker = rt.worker(concurrency)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(15), "the worker did not connect"
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop"


def wait_processed(client: httpx.Client, job_id: str, wait: Callable[..., Any], timeout: float = 20) -> Any:
    def done() -> Any:
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in {"processed", "failed"} else None

    return wait(done, timeout, message=f"job {job_id} to finish")


@pytest.mark.rabbitmq
def test_a_csv_goes_through_rabbitmq_to_processed(amqp_url: str, queue_prefix: str, settings_for: Any,
                                                  live_server: Any, wait: Any) -> None:
    rt = Runtime.build(settings_for(broker_url=amqp_url, queue_prefix=queue_prefix))
    with running_worker(rt), live_server(create_app(rt)) as server, httpx.Client(base_url=server.url) as client:
        response = client.post("/uploads", files={"file": ("parts.csv", b"name,qty\nbolt,3\nnut,5\n")})
        assert response.status_code == 202
        job = wait_processed(client, response.json()["id"], wait)
    assert job["status"] == "processed", job
    assert job["result"]["rows"] == 2
    assert job["attempts"] == 1
    rt.close()


def chute_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_")}
    env.update({"CHUTE_VAR_DIR": str(tmp_path / "var"), "CHUTE_HANDLERS": str(ROOT / "handlers"),
                "CHUTE_WORKER_CONCURRENCY": "2"})
    env.update(extra)
    return env


@contextmanager
def chute_process(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """`chute ARGS` as a real process; its output goes to a log file shown when a test fails."""
    log = cwd / f"chute-{args[0]}-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chute.cli", *args], env=env, cwd=cwd, text=True,
                                stdout=out, stderr=subprocess.STDOUT)
        proc.log = log  # type: ignore[attr-defined]
        try:
            yield proc
        except BaseException:
            sys.stderr.write(f"--- {log.name} ---\n{log.read_text()}\n")
            raise
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen[str], wait: Any) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"chute exited early:\n{proc.log.read_text()}")  # type: ignore[attr-defined]
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait(healthy, 30, 0.1, message=f"{url} to be ready")


@pytest.mark.rabbitmq
def test_api_and_worker_as_two_processes(amqp_url: str, queue_prefix: str, tmp_path: Path, port: int,
                                         wait: Any) -> None:
    env = chute_env(tmp_path, CHUTE_BROKER_URL=amqp_url, CHUTE_QUEUE_PREFIX=queue_prefix)
    url = f"http://127.0.0.1:{port}"
    with chute_process(["api", "--port", str(port)], env, tmp_path) as api, \
            chute_process(["worker", "--concurrency", "1"], env, tmp_path) as worker:
        wait_healthy(url, api, wait)
        with httpx.Client(base_url=url) as client:
            response = client.post("/uploads", files={"file": ("notes.txt", b"one two three\nfour\n")})
            assert response.status_code == 202
            job = wait_processed(client, response.json()["id"], wait)
        assert job["status"] == "processed", job
        assert job["result"] == {"lines": 2, "words": 4, "characters": 19, "encoding": "utf-8"}
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0


def test_serve_on_embedded_defaults_processes_a_csv_within_two_seconds(tmp_path: Path, port: int,
                                                                       wait: Any) -> None:
    """The README's promise: `make run`, then curl a CSV, and the row count is there within 2 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_")}
    env["CHUTE_HANDLERS"] = str(ROOT / "handlers")
    url = f"http://127.0.0.1:{port}"
    with chute_process(["serve", "--port", str(port)], env, tmp_path) as serve:
        wait_healthy(url, serve, wait)
        with httpx.Client(base_url=url) as client:
            started = time.monotonic()
            response = client.post("/uploads", files={"file": ("sales.csv", b"region,total\neu,10\nus,12\n")})
            assert response.status_code == 202
            job = wait_processed(client, response.json()["id"], wait, timeout=2.0)
            took = time.monotonic() - started
    assert job["status"] == "processed" and job["result"]["rows"] == 2, job
    assert took < 2.0
    assert (tmp_path / "var" / "chute.db").exists(), "SQLite under var/ by default"
    assert (tmp_path / "var" / "broker").is_dir(), "the embedded broker under var/ by default"


def test_fifty_concurrent_uploads_are_all_accepted_and_processed(settings_for: Any, live_server: Any,
                                                                 wait: Any) -> None:
    rt = Runtime.build(settings_for())
    with running_worker(rt), live_server(create_app(rt)) as server, httpx.Client(base_url=server.url) as client:
        def send(i: int) -> httpx.Response:
            with httpx.Client(base_url=server.url) as own:
                return own.post("/uploads", files={"file": (f"f{i}.csv", f"n\n{i}\n".encode())})

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(send, range(50)))
        assert [r.status_code for r in responses] == [202] * 50
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == 50
        listed = client.get("/jobs", params={"limit": 100}).json()["items"]
        assert {j["id"] for j in listed} == ids
        wait(lambda: len(client.get("/jobs", params={"status": "processed", "limit": 100}).json()["items"]) == 50,
             30, 0.1, message="all 50 jobs to be processed")
    rt.close()
