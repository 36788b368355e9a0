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
    assert listed.output.index(second["id"][-8:]) < listed.output.index(first["id"][-8:])
    assert first["id"][-8:] not in run("jobs", "--status", "processed", "--url", url).output


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


# --- job control and the one-job view -------------------------------------------------------------
def out_json(result: Any) -> Any:
    """What the command printed on stdout, as JSON (its notes go to stderr)."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cancel_cancels_a_pending_job_by_its_short_id_and_refuses_a_finished_one(served: Any) -> None:
    kit, url = served
    job = kit.upload(b"a,b\n1,2\n", "x.csv")
    cancelled = out_json(run("cancel", job["id"][-8:], "--url", url))
    assert (cancelled["id"], cancelled["status"]) == (job["id"], "cancelled")
    assert kit.drain() == 0
    again = run("cancel", job["id"], "--kill", "--url", url)
    assert again.exit_code == 1 and "409" in again.output and "cancelled" in again.output


def test_a_short_id_that_matches_several_jobs_is_refused_with_the_candidates(served: Any) -> None:
    kit, url = served
    ids = [kit.upload(b"a,b\n1,2\n", f"{i}.csv")["id"] for i in range(2)]
    shared = ids[0][:next(i for i, (a, b) in enumerate(zip(*ids, strict=True)) if a != b)]
    assert len(shared) >= 4, "uploads of one moment share the start of their ids"
    result = run("job", shared, "--url", url)
    assert result.exit_code == 1
    assert "ambiguous" in result.output and ids[0] in result.output and ids[1] in result.output
    missing = run("cancel", "abcdef0123", "--url", url)
    assert missing.exit_code == 1 and "no job" in missing.output


def test_retry_all_failed_reruns_every_failed_job_of_a_handler_and_says_how_many(served: Any) -> None:
    kit, url = served
    bad = b'a,b\n1,"' + b"x" * 200_000 + b'"\n'  # past the CSV field limit: Reject
    failed = [kit.upload(bad, f"bad{i}.csv")["id"] for i in range(2)]
    kit.drain()
    result = run("retry", "--all-failed", "--handler", "csv_stats", "--url", url)
    assert out_json(result) == {"count": 2}
    assert [kit.job(j)["status"] for j in failed] == ["pending", "pending"]
    assert run("retry", "--url", url).exit_code == 2, "an id, or --all-failed"
    assert run("retry", failed[0], "--all-failed", "--url", url).exit_code == 2


def test_job_shows_the_file_the_attempts_with_the_error_and_the_emails(served: Any) -> None:
    kit, url = served
    bad = b'a,b\n1,"' + b"x" * 200_000 + b'"\n'
    job = kit.upload(bad, "[bold]report.csv", notify="ops@example.com")
    kit.drain()
    result = CliRunner().invoke(app, ["job", job["id"][-8:], "--url", url], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    text = result.output
    for fact in (job["id"], "[bold]report.csv", "text/csv", job["sha256"], "csv_stats", "failed",
                 "rejected", "Reject", "ops@example.com", "sent"):
        assert fact in text, f"{fact!r} missing from:\n{text}"
    assert "Traceback" in text or "raise Reject" in text, "the error's traceback tail is shown"


def test_job_shows_a_processed_jobs_result_and_artifacts(served: Any, tmp_path: Path) -> None:
    from PIL import Image

    kit, url = served
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), "red").save(path)
    job = kit.upload(path.read_bytes(), "red.png")
    kit.drain()
    result = CliRunner().invoke(app, ["job", job["id"], "--url", url], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "processed" in result.output and '"width": 40' in result.output
    assert "thumbnail.png" in result.output and f"/jobs/{job['id']}/artifacts/thumbnail.png" in result.output


def test_every_listing_command_prints_the_apis_json_with_json(served: Any) -> None:
    kit, url = served
    job = kit.upload(b"a,b\n1,2\n", "x.csv")
    kit.drain()
    listed = out_json(run("jobs", "--json", "--url", url))
    assert [j["id"] for j in listed["items"]] == [job["id"]] and "next_cursor" in listed
    one = out_json(run("job", job["id"], "--json", "--url", url))
    assert one["job"] == kit.job(job["id"])
    assert [a["outcome"] for a in one["attempts"]] == ["processed"]
    specs = out_json(run("handlers", "--json", "--url", url))
    assert {s["name"] for s in specs} >= {"csv_stats", "text_stats"} and "retry" in specs[0]


def test_jobs_in_80_columns_keeps_status_and_handler_whole_and_shrinks_the_file_name(served: Any) -> None:
    kit, url = served
    long_name = "quarterly sales figures for every region and every product line 2024.csv"
    csv_job = kit.upload(b"a,b\n1,2\n", long_name)
    text_job = kit.upload(b"words and words", "notes.txt")
    kit.drain()
    result = CliRunner().invoke(app, ["jobs", "--url", url], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    for job, handler in ((csv_job, "csv_stats"), (text_job, "text_stats")):
        (row,) = [line for line in lines if job["id"][-8:] in line]
        assert "processed" in row and handler in row, row
    assert csv_job["id"] not in result.output, "the id column shows a short id"
    assert long_name not in result.output and "quarterly" in result.output, "the name shrank, and shows its start"


def test_jobs_watch_refreshes_every_second_until_ctrl_c(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from chute import cli

    kit, url = served
    job = kit.upload(b"a,b\n1,2\n", "x.csv")
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 1:
            kit.drain()  # between two refreshes the job is processed
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_pause", pause)
    result = run("jobs", "--watch", "--url", url)
    assert result.exit_code == 0, result.output
    assert pauses == [1.0, 1.0]
    (row,) = [line for line in result.output.splitlines() if job["id"][-8:] in line]
    assert "processed" in row, "the last frame shows the job as it is now, not as it was at the start"


def test_jobs_search_filters_by_file_name(served: Any) -> None:
    kit, url = served
    invoice = kit.upload(b"a,b\n1,2\n", "invoice-march.csv")
    other = kit.upload(b"a,b\n1,2\n", "notes.csv")
    listed = out_json(run("jobs", "--search", "INVOICE", "--json", "--url", url))
    assert [j["id"] for j in listed["items"]] == [invoice["id"]] and other["id"] != invoice["id"]
