"""The HTTP API on the testing kit's stub broker: every answer, including the refusals."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from chute.testing import ChuteApp


def files_on_disk(app: ChuteApp) -> list[Path]:
    return [p for p in app.settings.files_dir.rglob("*") if p.is_file()]


def test_an_upload_is_202_with_the_job_and_a_location(chute_app: ChuteApp) -> None:
    response = chute_app.client.post("/uploads", files={"file": ("sales.csv", b"a,b\n1,2\n", "text/csv")})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "pending"
    assert job["handler"] == "csv_stats"
    assert job["filename"] == "sales.csv"
    assert job["size"] == 8
    assert job["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert response.headers["location"].endswith(f"/jobs/{job['id']}")
    assert chute_app.client.get(f"/jobs/{job['id']}").json()["status"] == "pending"


def test_the_original_path_still_works(chute_app: ChuteApp) -> None:
    response = chute_app.client.post("/upload/", files={"file": ("a.txt", b"hello")})
    assert response.status_code == 202
    assert response.json()["handler"] == "text_stats"


def test_a_drained_job_is_processed_with_its_result(chute_app: ChuteApp) -> None:
    job = chute_app.upload(b"name,qty\nbolt,3\nnut,5\n", "parts.csv")
    chute_app.drain()
    done = chute_app.job(job["id"])
    assert done["status"] == "processed"
    assert done["result"]["rows"] == 2
    assert done["result"]["header"] == ["name", "qty"]
    assert done["attempts"] == 1
    assert done["finished_at"] is not None


def test_an_unknown_job_is_404_not_pending(chute_app: ChuteApp) -> None:
    response = chute_app.client.get("/jobs/0000000000000000000000000000dead")
    assert response.status_code == 404
    assert "detail" in response.json()


def test_jobs_are_listed_newest_first_with_filters_and_a_cursor(chute_app: ChuteApp) -> None:
    ids = [chute_app.upload(f"row,{i}\n".encode(), f"f{i}.csv")["id"] for i in range(5)]
    text = chute_app.upload(b"words", "w.txt")["id"]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2, "handler": "csv_stats"}
        if cursor:
            params["cursor"] = cursor
        page = chute_app.client.get("/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    assert chute_app.client.get("/jobs", params={"status": "processed"}).json()["items"] == []
    chute_app.drain()
    processed = chute_app.client.get("/jobs", params={"status": "processed", "limit": 100}).json()["items"]
    assert {j["id"] for j in processed} == {*ids, text}


def test_a_bad_status_filter_or_cursor_is_a_4xx(chute_app: ChuteApp) -> None:
    assert chute_app.client.get("/jobs", params={"status": "exploded"}).status_code == 422
    assert chute_app.client.get("/jobs", params={"cursor": "%%%"}).status_code == 400


def test_handlers_are_listed_with_policy_and_timeout(chute_app: ChuteApp) -> None:
    listed = {h["name"]: h for h in chute_app.client.get("/handlers").json()}
    assert listed["csv_stats"]["types"] == ["text/csv"]
    assert listed["csv_stats"]["retry"]["attempts"] == 3
    assert listed["csv_stats"]["timeout"] == 300


def test_health_and_readiness(chute_app: ChuteApp) -> None:
    assert chute_app.client.get("/healthz").json() == {"status": "ok"}
    ready = chute_app.client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert ready.json()["checks"] == {"database": "ok"}, "the in-memory queue has no server to check"


def test_readiness_is_503_when_the_broker_does_not_answer(tmp_path: Path) -> None:
    app = ChuteApp(tmp_path, handlers=Path(__file__).resolve().parents[2] / "handlers",
                   **{"broker_url": "amqp://guest:guest@127.0.0.1:1//"})
    try:
        ready = app.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["broker"] != "ok"
    finally:
        app.close()


# --- bad input: a clear 4xx with a reason, and nothing left behind --------------------------------
def test_a_missing_file_is_422(chute_app: ChuteApp) -> None:
    response = chute_app.client.post("/uploads", files={"notify": (None, "a@example.com")})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_a_body_that_is_not_multipart_is_400(chute_app: ChuteApp) -> None:
    response = chute_app.client.post("/uploads", content=b"just bytes", headers={"content-type": "text/plain"})
    assert response.status_code == 400
    assert "multipart/form-data" in response.json()["detail"]


def test_malformed_multipart_is_400_and_leaves_nothing(chute_app: ChuteApp) -> None:
    body = b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\na,b\n1,2'
    response = chute_app.client.post("/uploads", content=body,
                                     headers={"content-type": "multipart/form-data; boundary=XYZ"})
    assert response.status_code == 400
    assert files_on_disk(chute_app) == []


def test_a_part_without_a_name_is_400(chute_app: ChuteApp) -> None:
    body = b"--XYZ\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XYZ--\r\n"
    response = chute_app.client.post("/uploads", content=body,
                                     headers={"content-type": "multipart/form-data; boundary=XYZ"})
    assert response.status_code == 400


def test_an_empty_file_is_accepted_and_handled(chute_app: ChuteApp) -> None:
    job = chute_app.upload(b"", "empty.csv")
    chute_app.drain()
    done = chute_app.job(job["id"])
    assert done["status"] == "processed"
    assert done["result"]["rows"] == 0


def test_over_the_limit_is_413_and_nothing_is_left(tmp_path: Path) -> None:
    app = ChuteApp(tmp_path, handlers=Path(__file__).resolve().parents[2] / "handlers", max_upload_bytes=1000)
    try:
        response = app.client.post("/uploads", files={"file": ("big.txt", b"x" * 5000)})
        assert response.status_code == 413
        assert "1000" in response.json()["detail"]
        assert files_on_disk(app) == []
        assert app.client.get("/jobs").json()["items"] == []
    finally:
        app.close()


def test_a_declared_length_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    app = ChuteApp(tmp_path, handlers=Path(__file__).resolve().parents[2] / "handlers", max_upload_bytes=1000)
    try:
        def body() -> Iterator[bytes]:
            raise AssertionError("the body was read")
            yield b""

        response = app.client.post("/uploads", content=body(), headers={
            "content-type": "multipart/form-data; boundary=XYZ", "content-length": str(50 * 1024 * 1024)})
        assert response.status_code == 413
    finally:
        app.close()


def test_an_unknown_type_is_415_listing_what_is_accepted(chute_app: ChuteApp) -> None:
    response = chute_app.client.post("/uploads", files={"file": ("blob.bin", bytes(range(256)) * 8)})
    assert response.status_code == 415
    body = response.json()
    assert "text/csv" in body["accepted"] and "text/plain" in body["accepted"]
    assert "text/csv" in body["detail"]
    assert files_on_disk(chute_app) == []


def raw_upload(filename: bytes, content: bytes, fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart body written by hand, so the name reaches the server byte for byte."""
    body = b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename + b"\"\r\n"
    body += b"Content-Type: text/plain\r\n\r\n" + content + b"\r\n"
    for name, value in (fields or {}).items():
        body += f'--XYZ\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    return body + b"--XYZ--\r\n", "multipart/form-data; boundary=XYZ"


@pytest.mark.parametrize(("raw", "expected"), [
    (b"../../etc/passwd", "passwd"),
    (b"tab\tand\x1bescape.txt", "tabandescape.txt"),
    (b"a" * 5000 + b".txt", "a" * 196 + ".txt"),
    ("cod\u202etxt.exe".encode(), "codtxt.exe"),
    ("caf\u00e9 \u6587\u4ef6.txt".encode(), "caf\u00e9 \u6587\u4ef6.txt"),
])
def test_hostile_names_are_stored_safely_and_cleaned(chute_app: ChuteApp, raw: bytes, expected: str) -> None:
    body, ctype = raw_upload(raw, b"hello\n", {"handler": "text_stats"})
    response = chute_app.client.post("/uploads", content=body, headers={"content-type": ctype})
    assert response.status_code == 202, response.text
    job = response.json()
    stored = files_on_disk(chute_app)
    assert [p.relative_to(chute_app.settings.files_dir).as_posix() for p in stored] == \
        [f"{job['id'][:2]}/{job['id']}"]
    assert job["filename"] == expected


MAIL_HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Auto-Submitted", "X-Chute-Job",
                "X-Chute-Event", "Content-Type"}


def test_a_line_break_in_a_name_cannot_add_a_header(chute_app: ChuteApp) -> None:
    """A bare LF inside the quoted name is the line break that reaches the name the server reads (a CR LF
    ends the part's header line, a lone CR is refused as malformed, and HTTP clients send both as %0D%0A):
    the upload is accepted with the break removed, and the email about it has only Chute's own headers."""
    body, ctype = raw_upload(b"a.txt\nBcc: evil@example.com", b"hello\n",
                             {"handler": "text_stats", "notify": "ann@example.com"})
    response = chute_app.client.post("/uploads", content=body, headers={"content-type": ctype})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["filename"] == "a.txtBcc: evil@example.com"
    chute_app.drain()
    (mail,) = chute_app.outbox
    assert set(mail.keys()) == MAIL_HEADERS, "no Bcc (or any other) header came from the name"
    assert mail.get_all("To") == ["ann@example.com"]
    assert [n["recipient"] for n in chute_app.job(job["id"])["notifications"]] == ["ann@example.com"]
    assert mail["Subject"] == "[Chute] a.txtBcc: evil@example.com is processed"
    text = mail.get_body(("plain",))
    assert text is not None
    assert "Your file a.txtBcc: evil@example.com has been processed" in text.get_content()  # type: ignore[attr-defined]


def test_a_bad_notify_address_is_422_and_leaves_nothing(chute_app: ChuteApp) -> None:
    response = chute_app.client.post("/uploads", files={"file": ("a.txt", b"hi")},
                                     data={"notify": "ok@example.com, not-an-email"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "notify"]
    assert files_on_disk(chute_app) == []


def test_notify_is_repeatable_or_comma_separated(chute_app: ChuteApp) -> None:
    response = chute_app.client.post("/uploads", files={"file": ("a.txt", b"hi")},
                                     data={"notify": ["a@example.com, b@example.com", "c@example.com"]})
    assert response.json()["notify"] == ["a@example.com", "b@example.com", "c@example.com"]


def test_a_forced_handler_is_used_and_an_unknown_one_is_422(chute_app: ChuteApp) -> None:
    forced = chute_app.client.post("/uploads", files={"file": ("a.csv", b"a,b\n")}, data={"handler": "text_stats"})
    assert forced.json()["handler"] == "text_stats"
    unknown = chute_app.client.post("/uploads", files={"file": ("a.csv", b"a,b\n")}, data={"handler": "nope"})
    assert unknown.status_code == 422
    assert "csv_stats" in unknown.json()["detail"][0]["msg"]


def test_two_files_in_one_request_are_refused(chute_app: ChuteApp) -> None:
    response = chute_app.client.post("/uploads", files=[("file", ("a.txt", b"1")), ("file", ("b.txt", b"2"))])
    assert response.status_code == 400
    assert files_on_disk(chute_app) == []


def test_downloads_are_attachments_never_inline(chute_app: ChuteApp) -> None:
    job = chute_app.upload(b"<script>alert(1)</script>", "page.txt")
    response = chute_app.client.get(f"/jobs/{job['id']}/file")
    assert response.status_code == 200
    assert response.content == b"<script>alert(1)</script>"
    assert response.headers["content-disposition"].startswith("attachment")
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_api_keys_when_configured(tmp_path: Path) -> None:
    app = ChuteApp(tmp_path, handlers=Path(__file__).resolve().parents[2] / "handlers", api_keys=["s3cret"])
    try:
        assert app.client.get("/jobs").status_code == 401
        assert app.client.get("/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert app.client.get("/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert app.client.post("/uploads", files={"file": ("a.txt", b"x")}).status_code == 401
        assert app.client.get("/healthz").status_code == 200
    finally:
        app.close()


def test_metrics_count_jobs_attempts_and_uploads(chute_app: ChuteApp) -> None:
    chute_app.upload(b"a,b\n1,2\n", "a.csv")
    chute_app.upload(b"hello", "b.txt")
    chute_app.client.post("/uploads", files={"file": ("blob.bin", bytes(range(256)))})
    chute_app.drain()
    response = chute_app.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'chute_jobs_finished_total{handler="csv_stats",status="processed"} 1.0' in text
    assert 'chute_jobs_finished_total{handler="text_stats",status="processed"} 1.0' in text
    assert 'chute_attempts_total{handler="csv_stats",outcome="processed"} 1.0' in text
    assert 'chute_uploads_total{code="202"} 2.0' in text
    assert 'chute_uploads_total{code="415"} 1.0' in text
    assert "chute_upload_bytes_total 13.0" in text
