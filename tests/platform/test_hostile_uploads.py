"""Uploads from people who do not mean well: never a 5xx for bad input, nothing left behind when no
row was committed, and every part of the body parsed within bounds (count, bytes and time)."""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import chute.storage
from chute.api.ingest import Ingest
from chute.errors import JobNotFound
from chute.jobs import new_job_id
from chute.models import JobStatus
from chute.sniff import detect
from chute.testing import ChuteApp

ROOT = Path(__file__).resolve().parents[2]
MULTIPART = "multipart/form-data; boundary=XYZ"


# --- helpers ----------------------------------------------------------------------------------------
def files_on_disk(app: ChuteApp) -> list[Path]:
    return [p for p in app.settings.files_dir.rglob("*") if p.is_file()]


def orphans(app: ChuteApp) -> list[Path]:
    """Stored files whose job row does not exist."""
    found = []
    for path in files_on_disk(app):
        try:
            app.jobs.get(path.name)
        except JobNotFound:
            found.append(path)
    return found


def part(name: str, content: bytes, filename: bytes | None = None, ctype: bytes | None = None,
         extra: bytes = b"") -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name.encode() + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    headers = disposition + b"\r\n" + (b"Content-Type: " + ctype + b"\r\n" if ctype is not None else b"") + extra
    return b"--XYZ\r\n" + headers + b"\r\n" + content + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--XYZ--\r\n"


def post(app: ChuteApp, content: bytes | Iterator[bytes], ctype: str | bytes = MULTIPART) -> httpx.Response:
    return app.client.post("/uploads", content=content, headers={"content-type": ctype})


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., ChuteApp]]:
    """``make_app(**settings)``: a ChuteApp on the project's handlers with these settings."""
    apps: list[ChuteApp] = []

    def make(**settings: Any) -> ChuteApp:
        app = ChuteApp(tmp_path / f"var{len(apps)}", handlers=ROOT / "handlers", **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_database")
        return url
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


# --- 1. sniffing never recurses on the client's bytes ---------------------------------------------
NESTED = b"[" * 3000 + b"\n" + b"[" * 3000 + b"\n"


def test_deeply_nested_brackets_are_sniffed_without_recursion() -> None:
    assert detect(NESTED, "data", None).mime == "application/json"
    assert detect(b"[" * 3000 + b"]" * 3000 + b"\n[1]\n", "data", None).mime == "application/jsonl"


@pytest.mark.parametrize("filename", ["deep.json", "deep.txt", "deep"])
def test_an_upload_of_deeply_nested_brackets_is_202_and_leaves_no_orphan(chute_app: ChuteApp,
                                                                         filename: str) -> None:
    response = chute_app.client.post("/uploads", files={"file": (filename, NESTED)})
    assert response.status_code == 202, response.text
    assert len(files_on_disk(chute_app)) == 1
    assert orphans(chute_app) == []


# --- 2. a bug after the file is opened: a clean 503, logged, nothing left -------------------------
def _fail(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("a bug on the upload path")


@pytest.mark.parametrize("where", ["chute.api.uploads.choose_handler", "chute.api.uploads.job_row",
                                   "chute.api.uploads.notify_list", "chute.api.ingest.Ingest.persist",
                                   "chute.storage.FileWriter.write", "chute.storage.FileWriter.finish"])
def test_a_bug_anywhere_after_the_file_is_opened_is_a_logged_503_and_leaves_nothing(
        chute_app: ChuteApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str) -> None:
    monkeypatch.setattr(where, _fail)
    with caplog.at_level(logging.ERROR, logger="chute.api"):
        response = chute_app.client.post("/uploads", files={"file": ("a.txt", b"hello")})
    assert response.status_code == 503
    assert isinstance(response.json()["detail"], str)
    assert files_on_disk(chute_app) == []
    assert chute_app.client.get("/jobs").json()["items"] == []
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


def test_a_bug_in_the_insert_after_the_file_is_durable_removes_it(chute_app: ChuteApp,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chute_app.app.state.ingest._rows, "submit", _fail)
    response = chute_app.client.post("/uploads", files={"file": ("a.txt", b"hello")})
    assert response.status_code == 503
    assert files_on_disk(chute_app) == []


def test_a_failing_hand_on_after_commit_still_answers_202_and_keeps_the_job(
        chute_app: ChuteApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chute_app.runtime.relay, "send", _fail)
    response = chute_app.client.post("/uploads", files={"file": ("a.txt", b"hello")})
    assert response.status_code == 202
    assert chute_app.job(response.json()["id"])["status"] == "pending"
    assert len(files_on_disk(chute_app)) == 1 and orphans(chute_app) == []


# --- 3. boundaries -------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [71, 300, 5000])
def test_a_boundary_longer_than_rfc_2046_allows_is_400_with_a_reason(chute_app: ChuteApp, length: int) -> None:
    boundary = "b" * length
    response = post(chute_app, f"--{boundary}\r\n".encode(), f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 400
    assert "70" in response.json()["detail"]


@pytest.mark.parametrize("boundary", [b"a!b", b"a\xe9b", b"ends with a space "])
def test_a_boundary_with_characters_rfc_2046_does_not_allow_is_400(chute_app: ChuteApp, boundary: bytes) -> None:
    response = post(chute_app, b"--" + boundary + b"\r\n", b'multipart/form-data; boundary="' + boundary + b'"')
    assert response.status_code == 400
    assert "RFC 2046" in response.json()["detail"]


def test_a_boundary_of_exactly_70_characters_is_accepted(chute_app: ChuteApp) -> None:
    boundary = "B" * 70
    content = part("file", b"hi", b"a.txt").replace(b"XYZ", boundary.encode()) + f"--{boundary}--\r\n".encode()
    response = post(chute_app, content, f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 202, response.text


# --- 4. a plain field called file ----------------------------------------------------------------
def test_a_file_field_without_a_filename_is_422_like_upload_file(chute_app: ChuteApp) -> None:
    response = post(chute_app, body(part("file", b"just a form value")))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "file"]
    assert "filename" in error["msg"]
    assert files_on_disk(chute_app) == []


def test_an_empty_filename_is_still_a_file(chute_app: ChuteApp) -> None:
    response = post(chute_app, body(part("file", b"hello", b"")))
    assert response.status_code == 202
    assert response.json()["filename"] == "upload"


# --- 5. headers, content types and NUL bytes; a group commit nobody can poison --------------------
def test_a_part_header_longer_than_the_cap_is_400_with_a_reason(chute_app: ChuteApp) -> None:
    response = post(chute_app, body(part("file", b"hi", b"a" * 20_000 + b".txt")))
    assert response.status_code == 400
    assert "CHUTE_MAX_HEADER_BYTES" in response.json()["detail"]
    assert files_on_disk(chute_app) == []


def test_many_part_headers_together_longer_than_the_cap_are_400(chute_app: ChuteApp) -> None:
    padding = b"".join(b"X-Pad-%d: " % i + b"p" * 3000 + b"\r\n" for i in range(6))
    response = post(chute_app, body(part("file", b"hi", b"a.txt", extra=padding)))
    assert response.status_code == 400
    assert "CHUTE_MAX_HEADER_BYTES" in response.json()["detail"]


def test_a_declared_content_type_longer_than_its_column_is_400_and_leaves_nothing(chute_app: ChuteApp) -> None:
    ctype = b"application/x-" + b"a" * 300
    response = post(chute_app, body(part("file", bytes(range(256)), b"blob", ctype), part("handler", b"text_stats")))
    assert response.status_code == 400
    assert "255" in response.json()["detail"]
    assert files_on_disk(chute_app) == []


def test_a_declared_content_type_with_control_characters_is_400(chute_app: ChuteApp) -> None:
    response = post(chute_app, body(part("file", b"hi", b"a.txt", b"text/plain\x01")))
    assert response.status_code == 400


def test_a_nul_byte_in_the_file_name_is_400_with_a_reason(chute_app: ChuteApp) -> None:
    response = post(chute_app, body(part("file", b"hi", b"evil\x00name.txt")))
    assert response.status_code == 400
    assert "NUL" in response.json()["detail"]
    assert files_on_disk(chute_app) == []


@pytest.mark.parametrize("name", ["handler", "notify", "anything"])
def test_a_nul_byte_in_a_field_is_422_on_that_field(chute_app: ChuteApp, name: str) -> None:
    response = post(chute_app, body(part("file", b"hi", b"a.txt"), part(name, b"text\x00stats")))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", name]
    assert "NUL" in error["msg"]
    assert files_on_disk(chute_app) == []


def test_a_row_the_database_refuses_fails_only_its_own_upload_in_a_shared_batch(
        make_app: Callable[..., ChuteApp], database_url: str, monkeypatch: pytest.MonkeyPatch,
        wait: Callable[..., Any]) -> None:
    """Four uploads share group commits; one row reuses an existing job's id (the database refuses it
    with an IntegrityError). Only that upload fails; the three others are committed."""
    app = make_app(database_url=database_url)
    taken = app.upload(b"first", "first.txt")["id"]
    insert = app.jobs.insert
    batches: list[int] = []
    entered, release = threading.Event(), threading.Event()

    def gated(rows: Any) -> None:
        batches.append(len(rows))
        if len(batches) == 1:  # the first flush waits until the others queue up behind it
            entered.set()
            release.wait(10)
        insert(rows)

    monkeypatch.setattr(app.jobs, "insert", gated)
    ingest = Ingest(app.jobs, 5.0)
    ids = [new_job_id() for _ in range(4)]
    row_ids = [ids[0], ids[1], taken, ids[3]]
    outcomes: dict[int, BaseException | None] = {}

    def persist(i: int) -> None:
        writer = app.runtime.storage.writer(ids[i], 1 << 20)
        writer.write(b"content %d" % i)
        row = {"id": row_ids[i], "status": JobStatus.PENDING, "filename": f"{i}.txt", "content_type": "text/plain",
               "type_info": {}, "storage_key": writer.key, "handler": "text_stats", "attempts": 0,
               "max_attempts": 3, "notify": []}
        try:
            ingest.persist(writer, row)
            outcomes[i] = None
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=persist, args=(0,))]
    threads[0].start()
    assert entered.wait(10)
    threads += [threading.Thread(target=persist, args=(i,)) for i in (1, 2, 3)]
    for thread in threads[1:]:
        thread.start()
    wait(lambda: len(ingest._rows._waiting) == 3, message="three rows queued behind the first flush")
    release.set()
    for thread in threads:
        thread.join(10)
    assert batches[:2] == [1, 3], "the three rows shared one flush"
    assert outcomes[0] is None and outcomes[1] is None and outcomes[3] is None
    assert type(outcomes[2]).__name__ in {"IntegrityError", "UniqueViolation"}
    for i in (0, 1, 3):
        assert app.jobs.get(ids[i]).filename == f"{i}.txt"


def test_concurrent_uploads_with_bad_ones_among_them_each_get_their_own_answer(
        make_app: Callable[..., ChuteApp], database_url: str, live_server: Callable[[Any], Any]) -> None:
    """Over a real server, good uploads and bad ones (a Content-Type longer than its column, a NUL
    in a name) race into the same group commits: every good one is 202 and recorded, every bad one a
    400, and no file is left without its row."""
    app = make_app(database_url=database_url)
    bad_type = body(part("file", bytes(range(256)), b"blob", b"application/x-" + b"a" * 300),
                    part("handler", b"text_stats"))
    bad_name = body(part("file", b"hi", b"evil\x00.txt"))
    uploads = [("good", body(part("file", b"hello %d" % i, b"g%d.txt" % i))) for i in range(16)]
    uploads[5:5] = [("bad", bad_type)]
    uploads[11:11] = [("bad", bad_name), ("bad", bad_type)]
    answers: list[tuple[str, int, dict[str, Any]]] = []
    start = threading.Barrier(len(uploads))
    with live_server(app.app) as server:

        def send(kind: str, content: bytes) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                start.wait(10)
                response = client.post("/uploads", content=content, headers={"content-type": MULTIPART})
                answers.append((kind, response.status_code, response.json()))

        threads = [threading.Thread(target=send, args=upload) for upload in uploads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert sorted((kind, status) for kind, status, _ in answers) == \
        sorted([("bad", 400)] * 3 + [("good", 202)] * 16)
    for kind, _, answer in answers:
        if kind == "good":
            assert app.job(answer["id"])["status"] == "pending"
    assert len(files_on_disk(app)) == 16
    assert orphans(app) == []


# --- 6. bounded parsing ----------------------------------------------------------------------------
def test_more_fields_than_the_cap_is_413_and_leaves_nothing(make_app: Callable[..., ChuteApp]) -> None:
    app = make_app(max_fields=3)
    response = post(app, body(part("file", b"hi", b"a.txt"), *[part("x", b"1") for _ in range(4)]))
    assert response.status_code == 413
    assert "CHUTE_MAX_FIELDS" in response.json()["detail"]
    assert files_on_disk(app) == []


def test_fields_within_the_caps_are_accepted(make_app: Callable[..., ChuteApp]) -> None:
    app = make_app(max_fields=3, max_field_bytes=100)
    response = post(app, body(part("file", b"hi", b"a.txt"), *[part("x", b"1" * 30) for _ in range(3)]))
    assert response.status_code == 202, response.text


def test_more_parts_than_the_cap_is_413(make_app: Callable[..., ChuteApp]) -> None:
    app = make_app(max_parts=3)
    response = post(app, body(part("x", b"1"), part("y", b"2"), part("z", b"3"), part("file", b"hi", b"a.txt")))
    assert response.status_code == 413
    assert "CHUTE_MAX_PARTS" in response.json()["detail"]
    assert files_on_disk(app) == []


def chunked(content: bytes, size: int = 1000) -> Iterator[bytes]:
    """The body as a generator: the client sends it chunked, without a Content-Length."""
    for i in range(0, len(content), size):
        yield content[i:i + size]


def test_fields_over_their_total_cap_are_413_also_in_a_chunked_body(make_app: Callable[..., ChuteApp]) -> None:
    app = make_app(max_field_bytes=1000)
    content = body(part("file", b"hi", b"a.txt"), *[part(f"f{i}", b"v" * 400) for i in range(3)])
    response = post(app, chunked(content))
    assert response.status_code == 413
    assert "CHUTE_MAX_FIELD_BYTES" in response.json()["detail"]
    assert files_on_disk(app) == []


def test_a_chunked_body_that_never_ends_is_cut_at_the_body_cap(make_app: Callable[..., ChuteApp]) -> None:
    """An endless epilogue after the closing boundary costs no memory in the parser, but it must not
    hold the request forever either: the whole body is capped (file, fields and framing slack)."""
    app = make_app(max_upload_bytes=1000, max_field_bytes=1000)

    def endless() -> Iterator[bytes]:
        yield body(part("file", b"hi", b"a.txt"))
        for _ in range(100):
            yield b"x" * 65536  # 6.5 MB, past the 1 MiB of framing slack

    response = post(app, endless())
    assert response.status_code == 413
    assert files_on_disk(app) == []


# --- 7. slowloris -----------------------------------------------------------------------------------
SLOW_HEAD = (b"POST /uploads HTTP/1.1\r\nHost: chute\r\nContent-Type: " + MULTIPART.encode() +
             b"\r\nContent-Length: 100000\r\n\r\n" +
             b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="slow.txt"\r\n\r\nthe first bytes')


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The status, headers and JSON body of one response; fails at the deadline."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(rest) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, json.loads(rest)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_a_stalled_body_is_cut_with_408_and_its_file_removed(make_app: Callable[..., ChuteApp],
                                                             live_server: Callable[[Any], Any],
                                                             wait: Callable[..., Any]) -> None:
    app = make_app(upload_idle_timeout=0.5)
    with live_server(app.app) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(SLOW_HEAD)
        wait(lambda: files_on_disk(app), 5, 0.01, message="the file part to reach storage")
        status, headers, answer = read_response(sock, timeout=5)  # ...and then nothing more is sent
        assert status == 408
        assert "CHUTE_UPLOAD_IDLE_TIMEOUT" in answer["detail"]
        assert headers.get("connection") == "close"
        wait(lambda: closed_by_server(sock), 5, message="the server to close the connection")
        wait(lambda: files_on_disk(app) == [], 5, message="the file to be removed")
    assert app.client.get("/jobs").json()["items"] == []


def test_a_drip_fed_body_is_cut_at_the_body_timeout_with_408(make_app: Callable[..., ChuteApp],
                                                              live_server: Callable[[Any], Any],
                                                              wait: Callable[..., Any]) -> None:
    app = make_app(upload_idle_timeout=5, upload_body_timeout=1.0)
    with live_server(app.app) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(SLOW_HEAD)

        def answered() -> bool:
            """One more byte, then a short wait for the server's answer."""
            try:
                sock.send(b"x")
            except OSError:
                return True
            return bool(select.select([sock], [], [], 0.05)[0])

        wait(answered, 5, 0, message="the server to answer the drip")
        status, _, answer = read_response(sock, timeout=5)
        assert status == 408
        assert "CHUTE_UPLOAD_BODY_TIMEOUT" in answer["detail"]
        wait(lambda: files_on_disk(app) == [], 5, message="the file to be removed")


# --- 8. a full disk ----------------------------------------------------------------------------------
class FullDisk:
    """``os`` as the storage module sees it, but for one call that fails with ``code``."""

    def __init__(self, call: str, code: int) -> None:
        self.call, self.code = call, code

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _check(self, call: str) -> None:
        if call == self.call:
            raise OSError(self.code, os.strerror(self.code))

    def open(self, *args: Any) -> int:
        self._check("open")
        return os.open(*args)

    def write(self, fd: int, data: Any) -> int:
        self._check("write")
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        self._check("fsync")
        os.fsync(fd)


@pytest.mark.parametrize(("call", "code"), [("write", errno.ENOSPC), ("fsync", errno.ENOSPC),
                                            ("open", errno.ENOSPC), ("write", errno.EDQUOT)])
def test_a_full_disk_is_507_with_a_reason_and_nothing_half_recorded(
        chute_app: ChuteApp, monkeypatch: pytest.MonkeyPatch, call: str, code: int) -> None:
    monkeypatch.setattr(chute.storage, "os", FullDisk(call, code))
    response = chute_app.client.post("/uploads", files={"file": ("a.txt", b"hello")})
    assert response.status_code == 507
    assert "disk is full" in response.json()["detail"]
    monkeypatch.undo()
    assert files_on_disk(chute_app) == []
    assert chute_app.client.get("/jobs").json()["items"] == []


def test_a_full_database_disk_is_507_and_the_file_is_removed(chute_app: ChuteApp,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def full(_row: Any) -> None:
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = 13
        raise exc

    monkeypatch.setattr(chute_app.app.state.ingest._rows, "submit", full)
    response = chute_app.client.post("/uploads", files={"file": ("a.txt", b"hello")})
    assert response.status_code == 507
    assert files_on_disk(chute_app) == []
