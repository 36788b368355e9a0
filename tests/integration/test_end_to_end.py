"""Upload → handler → status, through real parts: uvicorn over HTTP, RabbitMQ or the embedded broker,
child processes running the handlers, and the `chute` command itself."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from chute.api import create_app

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def wait_finished(client: httpx.Client, job_id: str, wait: Any, timeout: float = 20) -> Any:
    def done() -> Any:
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in {"processed", "failed"} else None

    return wait(done, timeout, 0.02, message=f"job {job_id} to finish")


def wait_ready(url: str, proc: Any, wait: Any) -> None:
    def ready() -> bool:
        assert proc.popen.poll() is None, f"chute exited early:\n{proc.output()}"
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait(ready, 30, 0.1, message=f"{url} to be ready")


@pytest.mark.rabbitmq
def test_a_csv_goes_over_http_and_rabbitmq_to_processed(make_chute: Any, amqp_url: str, queue_prefix: str,
                                                        live_server: Any, wait: Any) -> None:
    chute = make_chute(broker_url=amqp_url, queue_prefix=queue_prefix, handlers=ROOT / "handlers")
    chute.start_worker()
    with live_server(create_app(chute.rt)) as server, httpx.Client(base_url=server.url) as client:
        response = client.post("/uploads", files={"file": ("parts.csv", b"name,qty\nbolt,3\nnut,5\n")})
        assert response.status_code == 202
        job = wait_finished(client, response.json()["id"], wait)
    assert (job["status"], job["attempts"], job["result"]["rows"]) == ("processed", 1, 2), job


def test_api_and_worker_as_two_processes(make_chute: Any, source: dict[str, Any], chute_proc: Any,
                                         env_for: Any, port: int, wait: Any) -> None:
    """On the database source the worker sees the other process's upload by its poll, not a wake-up."""
    settings = make_chute(handlers=ROOT / "handlers", **source).rt.settings
    env = env_for(settings)
    url = f"http://127.0.0.1:{port}"
    api = chute_proc(["api", "--port", str(port)], env)
    worker = chute_proc(["worker", "--concurrency", "1"], env)
    wait_ready(url, api, wait)
    with httpx.Client(base_url=url) as client:
        response = client.post("/uploads", files={"file": ("notes.txt", b"one two three\nfour\n")})
        assert response.status_code == 202
        job = wait_finished(client, response.json()["id"], wait)
    assert job["status"] == "processed", job
    assert job["result"] == {"lines": 2, "words": 4, "characters": 19, "encoding": "utf-8"}
    assert worker.stop() == 0


def test_serve_on_embedded_defaults_processes_a_csv_within_two_seconds(tmp_path: Path, chute_proc: Any, port: int,
                                                                       wait: Any) -> None:
    """The README's promise: `make run`, then curl a CSV, and the row count is there within 2 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_")}
    env["CHUTE_HANDLERS"] = str(ROOT / "handlers")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, chute_proc(["serve", "--port", str(port)], env), wait)
    with httpx.Client(base_url=url) as client:
        started = time.monotonic()
        response = client.post("/uploads", files={"file": ("sales.csv", b"region,total\neu,10\nus,12\n")})
        assert response.status_code == 202
        job = wait_finished(client, response.json()["id"], wait, timeout=2.0)
        took = time.monotonic() - started
    assert job["status"] == "processed" and job["result"]["rows"] == 2, job
    assert took < 2.0
    assert (tmp_path / "var" / "chute.db").exists(), "SQLite under var/ by default"
    assert not (tmp_path / "var" / "broker").exists(), "no broker of its own: the database is the queue"


def test_fifty_concurrent_uploads_are_all_accepted_and_processed(make_chute: Any, live_server: Any,
                                                                 wait: Any) -> None:
    chute = make_chute(handlers=ROOT / "handlers")
    chute.start_worker()
    with live_server(create_app(chute.rt)) as server, httpx.Client(base_url=server.url) as client:
        def send(i: int) -> httpx.Response:
            with httpx.Client(base_url=server.url) as own:
                return own.post("/uploads", files={"file": (f"f{i}.csv", f"n\n{i}\n".encode())})

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(send, range(50)))
        assert [r.status_code for r in responses] == [202] * 50
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == 50
        assert {j["id"] for j in client.get("/jobs", params={"limit": 100}).json()["items"]} == ids
        wait(lambda: len(client.get("/jobs", params={"status": "processed", "limit": 100}).json()["items"]) == 50,
             30, 0.1, message="all 50 jobs to be processed")
