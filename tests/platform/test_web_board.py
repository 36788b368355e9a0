"""The web page's data routes and queries, without a browser: what the board, its stream and the chart
answer, that the shells open without a key while the data stays behind it, and the shells' headers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chute.models import JobStatus
from chute.testing import ChuteApp
from chute.web import board as board_module
from chute.web.queries import percentile, summarize

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = ROOT / "handlers"
KEY = "board-test-key"
CSV = b"a,b\n1,2\n3,4\n"


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[ChuteApp]:
    app = ChuteApp(tmp_path / "var", handlers=HANDLERS)
    yield app
    app.close()


def test_the_board_lists_rows_without_results_newest_first_with_counts(kit: ChuteApp) -> None:
    first = kit.upload(CSV, "first.csv")
    second = kit.upload(b'{"broken": ', "second.json")
    kit.drain()
    body = kit.client.get("/board").json()
    assert [r["id"] for r in body["items"]] == [second["id"], first["id"]]
    assert "result" not in body["items"][0], "a list row never carries a (possibly large) result"
    assert body["items"][0]["error"]["type"] == "Reject"
    assert body["counts"] == {"pending": 0, "running": 0, "retrying": 0, "processed": 1, "failed": 1,
                              "cancelled": 0, "all": 2}


def test_search_finds_a_job_by_any_part_of_its_name_or_the_start_of_its_sha256(kit: ChuteApp) -> None:
    wanted = kit.upload(CSV, "Quarterly Sales.csv")
    kit.upload(b"x,y\n5,6\n", "other.csv")

    def found(q: str) -> list[str]:
        return [r["id"] for r in kit.client.get("/board", params={"q": q}).json()["items"]]

    assert found("sales") == [wanted["id"]]
    assert found(wanted["sha256"][:10]) == [wanted["id"]]
    assert found(wanted["id"][:12]) == [wanted["id"]]
    literal = kit.upload(CSV, "a_b.csv")
    kit.upload(CSV, "axb.csv")
    assert found("a_b") == [literal["id"]], "LIKE wildcards in the search are literal"


def test_the_board_pages_with_the_cursor_get_jobs_gives_out(kit: ChuteApp) -> None:
    ids = [kit.upload(CSV, f"f{i}.csv")["id"] for i in range(5)]
    first = kit.client.get("/board", params={"limit": 2}).json()
    second = kit.client.get("/board", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [r["id"] for r in first["items"] + second["items"]] == ids[::-1][:4]
    assert kit.client.get("/jobs", params={"limit": 2}).json()["next_cursor"] == first["next_cursor"]
    assert kit.client.get("/board", params={"cursor": "nonsense"}).status_code == 400


def test_the_event_stream_sends_the_board_and_again_when_it_changes(kit: ChuteApp,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(board_module, "TICK", 0.05)
    monkeypatch.setattr(board_module, "STREAM_SECONDS", 0.6)
    job = kit.upload(CSV, "live.csv")
    frames: list[dict[str, Any]] = []
    with kit.client.stream("GET", "/board/events", headers={"Accept": "text/event-stream"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                frames.append(json.loads(line[5:]))
                if len(frames) == 1:
                    kit.drain()  # the job ends while the stream is open
    statuses = [f["items"][0]["status"] for f in frames]
    assert statuses[0] == "pending" and statuses[-1] == "processed", statuses
    assert len(frames) == len({json.dumps(f) for f in frames}), "an unchanged board is not sent again"
    assert frames[-1]["items"][0]["id"] == job["id"]


def test_a_client_that_does_not_ask_for_a_stream_gets_one_frame_and_the_end(kit: ChuteApp) -> None:
    """A crawler, a curl or a test walking every route is not held for the stream's 30 s."""
    kit.upload(CSV, "once.csv")
    started = time.monotonic()
    response = kit.client.get("/board/events")
    assert time.monotonic() - started < board_module.STREAM_SECONDS / 3
    frames = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    assert len(frames) == 1 and frames[0]["items"][0]["filename"] == "once.csv"


def test_stats_count_finished_jobs_per_minute_and_time_each_handler(kit: ChuteApp) -> None:
    kit.upload(CSV, "a.csv")
    kit.upload(b'{"broken": ', "b.json")
    kit.drain()
    stats = kit.client.get("/board/stats").json()
    assert sum(m["processed"] for m in stats["finished"]["all"]) == 1
    assert sum(m["failed"] for m in stats["finished"]["json_info"]) == 1
    assert len(stats["finished"]["all"]) == 60
    assert stats["durations"]["csv_stats"]["runs"] == 1 and stats["durations"]["csv_stats"]["p95"] >= 0
    only_csv = kit.client.get("/board/stats", params={"handler": "csv_stats"}).json()
    assert set(only_csv["durations"]) == {"csv_stats"}
    figures = kit.client.get("/board/handlers").json()
    assert figures["csv_stats"]["counts"]["processed"] == 1
    assert figures["pdf_info"]["counts"]["processed"] == 0, "every registered handler is listed"


def test_summarize_buckets_by_the_job_end_counts_a_job_once_and_leaves_lost_attempts_untimed() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    since = now - timedelta(hours=1)

    def at(minutes: float) -> datetime:
        return since + timedelta(minutes=minutes)

    rows = [
        ("j1", at(10), at(10) + timedelta(seconds=2), "error", "h", JobStatus.PROCESSED, at(12)),
        ("j1", at(11), at(12), "processed", "h", JobStatus.PROCESSED, at(12)),
        ("j2", at(30), at(30) + timedelta(seconds=4), "lost", "h", JobStatus.FAILED, at(59.5)),
        ("j3", at(40), at(40) + timedelta(seconds=1), "processed", "h", JobStatus.RUNNING, None),
    ]
    out = summarize(rows, since, now)
    assert out["finished"]["h"][12] == {"processed": 1, "failed": 0}
    assert out["finished"]["all"][59] == {"processed": 0, "failed": 1}
    assert sum(m["processed"] + m["failed"] for m in out["finished"]["all"]) == 2
    assert out["durations"]["h"]["runs"] == 3, "the lost attempt says nothing about the handler's speed"


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_with_keys_the_shells_open_and_every_data_route_of_the_page_needs_the_key(tmp_path: Path) -> None:
    app = ChuteApp(tmp_path / "var", handlers=HANDLERS, api_keys=[KEY])
    try:
        for path in ("/", "/ui/jobs/0123abcd", "/ui/handlers", "/ui/static/jobs.js", "/ui/static/chute.css"):
            assert app.client.get(path).status_code == 200, path
        for path in ("/board", "/board/events", "/board/stats", "/board/handlers"):
            assert app.client.get(path).status_code == 401, path
        for path in ("/board", "/board/stats", "/board/handlers"):
            assert app.client.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200, path
        assert app.client.get("/ui/static/../deps.py").status_code == 404
    finally:
        app.close()


def test_the_shell_forbids_inline_script_and_other_origins_and_holds_no_data(kit: ChuteApp) -> None:
    kit.upload(CSV, "secret-name.csv")
    response = kit.client.get("/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert "secret-name" not in response.text
    assert "<script>" not in response.text, "no inline script: the policy would block it"
    page = kit.client.get('/ui/jobs/"><b>x')
    assert page.status_code == 404
