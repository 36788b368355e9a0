"""The `chute` command against a running API (uvicorn in a thread, stub broker drained by the test)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chute.cli import app
from chute.testing import ChuteApp

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path: Path, live_server: Any) -> Any:
    kit = ChuteApp(tmp_path / "var", handlers=ROOT / "handlers")
    with live_server(kit.app) as server:
        yield kit, server.url
    kit.close()


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_upload_prints_the_job_and_wait_waits_for_the_result(served: Any, tmp_path: Path) -> None:
    kit, url = served
    path = tmp_path / "sales.csv"
    path.write_text("region,total\neu,10\n")
    plain = run("upload", str(path), "--url", url)
    assert plain.exit_code == 0, plain.output
    job = json.loads(plain.output.strip().splitlines()[-1])
    assert job["status"] == "pending" and job["handler"] == "csv_stats"

    waited_for: dict[str, Any] = {}

    def upload_and_wait() -> None:
        waited_for["result"] = run("upload", str(path), "--url", url, "--wait")

    uploader = threading.Thread(target=upload_and_wait)
    uploader.start()
    kit_wait = threading.Event()

    def drain_until_done() -> None:
        while uploader.is_alive() and not kit_wait.wait(0.05):
            kit.drain()

    drainer = threading.Thread(target=drain_until_done)
    drainer.start()
    uploader.join(timeout=30)
    kit_wait.set()
    drainer.join(timeout=10)
    result = waited_for["result"]
    assert result.exit_code == 0, result.output
    finished = json.loads(result.output.strip().splitlines()[-1])
    assert finished["status"] == "processed" and finished["result"]["rows"] == 1


def test_an_unacceptable_file_exits_non_zero_with_the_reason(served: Any, tmp_path: Path) -> None:
    _, url = served
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 4)
    result = run("upload", str(path), "--url", url)
    assert result.exit_code == 1
    assert "415" in result.output and "text/csv" in result.output


def test_jobs_lists_newest_first_and_filters_by_status(served: Any) -> None:
    kit, url = served
    first = kit.upload(b"a,b\n1,2\n", "x.csv")
    second = kit.upload(b"a,b\n1,2\n", "y.csv")
    listed = run("jobs", "--url", url)
    assert listed.exit_code == 0
    assert listed.output.index(second["id"]) < listed.output.index(first["id"])
    assert first["id"] not in run("jobs", "--status", "processed", "--url", url).output


def test_retry_reruns_a_failed_job_and_refuses_a_pending_one(served: Any) -> None:
    kit, url = served
    bad = kit.upload(b'a,b\n1,"' + b"x" * 200_000 + b'"\n', "bad.csv")  # past the CSV field limit: Reject
    kit.drain()
    assert kit.job(bad["id"])["status"] == "failed"
    rerun = run("retry", bad["id"], "--url", url)
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.output)["status"] == "pending"
    refused = run("retry", bad["id"], "--url", url)
    assert refused.exit_code == 1 and "409" in refused.output


def test_handlers_lists_types_and_policies(served: Any) -> None:
    _, url = served
    result = run("handlers", "--url", url)
    assert result.exit_code == 0
    assert "csv_stats" in result.output and "text/csv" in result.output and "attempts=3" in result.output
