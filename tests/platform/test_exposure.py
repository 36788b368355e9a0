"""Nothing open by accident: keys on every route but /healthz, malformed keys are 401s, no error text
in /readyz, no listening beyond loopback without keys, one line for a bad database URL, a non-root
image, no published management port, and dependencies past their known holes."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from sqlalchemy.exc import OperationalError
from starlette.routing import Mount

from chute.errors import ConfigError
from chute.settings import load_settings
from chute.testing import ChuteApp

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = ROOT / "handlers"
KEY = "s3cret-api-key"
SCRAPER = "scraper-only-key"
BEARER = {"Authorization": f"Bearer {KEY}"}
#: the web page's shells and static files: markup with no data in it (the script asks for the key)
PAGE_SHELLS = {("GET", "/"), ("GET", "/ui/jobs/x"), ("GET", "/ui/handlers"), ("GET", "/ui/static/x")}


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[ChuteApp]:
    app = ChuteApp(tmp_path / "var", handlers=HANDLERS, api_keys=[KEY, "clé-secrète"], metrics_key=SCRAPER)
    try:
        yield app
    finally:
        app.close()


def _requests(app: Any) -> list[tuple[str, str]]:
    """(method, path) for every route in the app's table (included routers flattened), parameters filled in."""
    import fastapi.routing

    flatten = getattr(fastapi.routing, "iter_route_contexts", None)  # FastAPI >= 0.16x nests included routers
    found = []
    for route in flatten(app.routes) if flatten else app.routes:
        path = getattr(route, "path", None)
        assert isinstance(path, str), f"a route this test cannot walk: {route!r}"
        if isinstance(getattr(route, "original_route", route), Mount):
            found.append(("GET", path + "/"))
            continue
        path = re.sub(r"\{[^}]+\}", "x", path)
        found.extend((method, path) for method in sorted(getattr(route, "methods", None) or {"GET"}))
    return found


# --- 1. keys cover every route but /healthz ---------------------------------------------------------
def test_with_keys_every_route_but_healthz_needs_one(keyed: ChuteApp) -> None:
    requests = _requests(keyed.app)
    paths = {path for _, path in requests}
    assert {"/docs", "/openapi.json", "/redoc", "/metrics", "/readyz", "/uploads", "/upload/", "/jobs",
            "/handlers", "/healthz"} <= paths, "the walk must see the whole table"
    open_without_key = {(m, p) for m, p in requests if keyed.client.request(m, p).status_code != 401}
    assert open_without_key == {("GET", "/healthz")} | PAGE_SHELLS, "only liveness and the page's shells answer"
    refused_with_key = {(m, p) for m, p in requests if keyed.client.request(m, p, headers=BEARER).status_code == 401}
    assert refused_with_key == set()


def test_the_kits_own_calls_send_the_first_key(keyed: ChuteApp) -> None:
    """A handler author who turns keys on in a test keeps ``chute_app.upload`` and ``chute_app.job``."""
    job = keyed.upload(b"hello\n", "hello.txt")
    assert keyed.job(job["id"])["status"] == "pending"
    assert keyed.client.get(f"/jobs/{job['id']}").status_code == 401  # the bare client sends nothing


def test_a_route_added_later_is_covered_without_saying_so(keyed: ChuteApp) -> None:
    keyed.app.add_api_route("/added-later", lambda: {"ok": True}, methods=["GET"])
    assert keyed.client.get("/added-later").status_code == 401
    assert keyed.client.get("/added-later", headers=BEARER).json() == {"ok": True}
    assert keyed.client.get("/no-such-route").status_code == 401, "no 404 that maps the API to a stranger"


def test_the_metrics_key_opens_metrics_and_nothing_else(keyed: ChuteApp) -> None:
    scraper = {"Authorization": f"Bearer {SCRAPER}"}
    opened = {(m, p) for m, p in _requests(keyed.app)
              if keyed.client.request(m, p, headers=scraper).status_code != 401}
    assert opened == {("GET", "/healthz"), ("GET", "/metrics")} | PAGE_SHELLS
    assert "chute_uploads" in keyed.client.get("/metrics", headers=scraper).text
    assert keyed.client.get("/metrics", headers=BEARER).status_code == 200, "an API key opens it too"


def test_a_metrics_key_alone_closes_metrics_only(tmp_path: Path) -> None:
    app = ChuteApp(tmp_path / "var", handlers=HANDLERS, metrics_key=SCRAPER)
    try:
        assert app.client.get("/metrics").status_code == 401
        assert app.client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPER}"}).status_code == 200
        assert app.client.get("/jobs").status_code == 200
        assert app.client.get("/docs").status_code == 200
    finally:
        app.close()


def test_without_keys_the_schema_asks_for_none_and_with_keys_it_says_which(keyed: ChuteApp,
                                                                           chute_app: ChuteApp) -> None:
    open_schema = chute_app.client.get("/openapi.json").json()
    assert "securitySchemes" not in open_schema.get("components", {})
    schema = keyed.client.get("/openapi.json", headers=BEARER).json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "one of CHUTE_API_KEYS"}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path == "/healthz":
                assert "security" not in operation
            else:
                assert operation["security"] == [{"bearer": []}], path
                assert "401" in operation["responses"], path


# --- 2. malformed Authorization headers, on the wire -----------------------------------------------
def _raw(port: int, authorization: bytes | None, method: bytes = b"GET", path: bytes = b"/jobs") -> tuple[int, str]:
    """One request as bytes, so nothing normalises the header on the way; (status, raw head)."""
    header = b"Authorization: " + authorization + b"\r\n" if authorization is not None else b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(method + b" " + path + b" HTTP/1.1\r\nHost: chute\r\n" + header +
                     b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    return int(head.split(" ", 2)[1]), head


@pytest.mark.parametrize("authorization", [
    b"Bearer \xff\xfe\x80",                   # bytes >= 0x80 that are not UTF-8
    "Bearer s3cret-api-kéy".encode(),        # UTF-8, near the key
    "Bearer clé-secrète".encode("latin-1"),  # a configured key, in the wrong encoding
    b"\x80\x81\x82",                         # no scheme, not ASCII
    KEY.encode(),                            # no scheme
    b"Bearer",                               # a scheme with no token
    b"Bearer    ",
    b"Basic czNjcmV0LWFwaS1rZXk=",           # another scheme
    b"Bearer " + b"k" * 10_000,              # very long
    b"Bearer " + KEY.encode() + b"x",        # the key and more
    b"Bearer " + KEY.encode()[:-1],          # a prefix of the key
], ids=lambda v: repr(v[:24]))
def test_a_malformed_or_foreign_authorization_header_is_a_401_on_the_wire(keyed: ChuteApp, live_server: Any,
                                                                         authorization: bytes) -> None:
    with live_server(keyed.app) as server:
        for method, path in ((b"GET", b"/jobs"), (b"GET", b"/metrics"), (b"POST", b"/uploads"), (b"GET", b"/docs")):
            status, head = _raw(server.port, authorization, method, path)
            assert status == 401, f"{method!r} {path!r}: {head}"
            assert re.search(r"(?im)^www-authenticate: Bearer", head), head


def test_keys_match_as_bytes_on_the_wire(keyed: ChuteApp, live_server: Any) -> None:
    with live_server(keyed.app) as server:
        assert _raw(server.port, b"Bearer " + KEY.encode())[0] == 200
        assert _raw(server.port, b"bearer   " + KEY.encode() + b"  ")[0] == 200, "the scheme is case-insensitive"
        assert _raw(server.port, "Bearer clé-secrète".encode())[0] == 200, "a non-ASCII key, sent as UTF-8"
        assert _raw(server.port, None, path=b"/healthz")[0] == 200


# --- 3. no listening beyond loopback without keys ----------------------------------------------------
@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.20", False), ("10.0.0.7", False),
    ("::ffff:127.0.0.1", False), ("no-such-host.invalid", False),
])
def test_loopback_is_only_this_machine(host: str, loopback: bool) -> None:
    from chute.cli import is_loopback

    assert is_loopback(host) is loopback


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "CHUTE_VAR_DIR": str(tmp_path / "var"), "CHUTE_HANDLERS": str(HANDLERS),
           "CHUTE_TEMPLATES": str(ROOT / "notifications" / "templates")}
    if "PYTHONPATH" in os.environ:  # the copy of chute under test, in the subprocess too
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _chute(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 30) -> tuple[int | None, str]:
    """Run ``chute ARGS``; (exit code, stderr), or (None, stderr) when it was still running at ``timeout``."""
    proc = subprocess.Popen([sys.executable, "-m", "chute.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return None, err


@pytest.mark.slow
@pytest.mark.parametrize(("command", "host"), [("api", "0.0.0.0"), ("api", "::"), ("api", "10.0.0.7"),
                                               ("serve", "0.0.0.0")])
def test_listening_beyond_loopback_without_keys_is_refused(tmp_path: Path, command: str, host: str) -> None:
    code, err = _chute([command, "--host", host, "--port", str(_free_port())], _env(tmp_path), tmp_path, timeout=20)
    assert code == 2, f"still serving (or another exit) on {host}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("chute: ") and "CHUTE_API_KEYS" in lines[0] and "CHUTE_ALLOW_OPEN=1" in lines[0]
    assert not (tmp_path / "var" / "chute.db").exists(), "refused before anything was built"


def _serves(tmp_path: Path, env: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Start ``chute api --host 0.0.0.0``; the status of GET /jobs once it answers, and its stderr so far."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "chute.cli", "api", "--host", "0.0.0.0", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/jobs", headers=headers or {}, timeout=1).status_code
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "chute api did not answer"
                time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return status, err


@pytest.mark.slow
def test_allow_open_serves_beyond_loopback_with_a_warning(tmp_path: Path) -> None:
    status, err = _serves(tmp_path, _env(tmp_path, CHUTE_ALLOW_OPEN="1"))
    assert status == 200
    assert "CHUTE_ALLOW_OPEN=1" in err and "anyone" in err


@pytest.mark.slow
def test_keys_serve_beyond_loopback(tmp_path: Path) -> None:
    assert _serves(tmp_path, _env(tmp_path, CHUTE_API_KEYS=KEY), BEARER)[0] == 200


# --- 4. /readyz names what is down, never how ---------------------------------------------------------
def test_readyz_never_echoes_database_error_text(chute_app: ChuteApp, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    def down() -> None:
        raise OperationalError("SELECT 1", {}, Exception(
            'connection to server at "db.internal.example" (10.1.2.3), port 5432 failed: '
            'password authentication failed for user "chute" (postgresql://chute:hunter2@db.internal.example)'))

    monkeypatch.setattr(chute_app.runtime.db, "ping", down)
    with caplog.at_level(logging.WARNING, logger="chute.api"):
        ready = chute_app.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "unavailable"}
    for secret in ("hunter2", "db.internal", "10.1.2.3", "OperationalError", "chute\""):
        assert secret not in ready.text
    assert "db.internal.example" in caplog.text, "the operator finds the reason in the log"


def test_readyz_never_echoes_broker_error_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = ChuteApp(tmp_path / "var", handlers=HANDLERS, broker_url="amqp://chute:hunter2@127.0.0.1:1//")
    try:
        with caplog.at_level(logging.WARNING, logger="chute.api"):
            ready = app.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"database": "ok", "broker": "unavailable"}
        assert "127.0.0.1" not in ready.text and "hunter2" not in ready.text
        assert "127.0.0.1" in caplog.text and "hunter2" not in caplog.text
    finally:
        app.close()


# --- 5. a bad database URL: one line, no password -------------------------------------------------------
BAD_DATABASE_URLS = [
    "nosuchdriver://x",
    "nosuchdriver://chute:hunter2@db/chute",
    "postgresql+nosuchdriver://chute:hunter2@db/chute",
    "mysql://chute:hunter2@db/chute",               # a dialect whose driver is not installed
    "postgresql//chute:hunter2@db/chute",           # not a URL at all
    "postgresql://chute:hunter2@db:notaport/chute",
]


@pytest.mark.parametrize("url", BAD_DATABASE_URLS)
def test_a_bad_database_url_is_one_line_without_the_password(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path, url: str) -> None:
    from chute.runtime import Runtime

    monkeypatch.setenv("CHUTE_DATABASE_URL", url)
    with pytest.raises(ConfigError) as caught:
        Runtime.build(load_settings(var_dir=tmp_path, handlers=HANDLERS))
    message = str(caught.value)
    assert "CHUTE_DATABASE_URL" in message and "\n" not in message and "hunter2" not in message


@pytest.mark.slow
@pytest.mark.parametrize("url", BAD_DATABASE_URLS[:4] + BAD_DATABASE_URLS[4:5])
def test_a_bad_database_url_stops_the_command_with_one_line(tmp_path: Path, url: str) -> None:
    code, err = _chute(["migrate"], _env(tmp_path, CHUTE_DATABASE_URL=url), tmp_path)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("chute: ") and "CHUTE_DATABASE_URL" in lines[0]
    assert "hunter2" not in err


# --- 6. the image and the compose file --------------------------------------------------------------------
def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def test_the_image_runs_as_a_user_that_owns_data_and_nothing_more() -> None:
    steps = _dockerfile()
    users = [arg.strip() for op, arg in steps if op == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}, "the image must not run as root"
    user = users[-1].split(":")[0]
    last_user = max(i for i, (op, _) in enumerate(steps) if op == "USER")
    cmd = max(i for i, (op, _) in enumerate(steps) if op in {"CMD", "ENTRYPOINT"})
    assert last_user < cmd
    runs = " ".join(arg for op, arg in steps[:last_user] if op == "RUN")
    assert re.search(rf"useradd\b.*\b{user}\b", runs), "the user is made in the image"
    assert re.search(rf"chown\s+{user}(:{user})?\s+/data\b", runs), "and owns /data"
    copies = [arg for op, arg in steps if op == "COPY"]
    assert not any("--chown" in arg for arg in copies), "code and handlers stay root's, read-only to Chute"


def test_the_image_says_whether_it_may_listen_open() -> None:
    env = " ".join(arg for op, arg in _dockerfile() if op == "ENV")
    assert re.search(r"\bCHUTE_ALLOW_OPEN=0\b", env) or "CHUTE_API_KEYS=" in env
    assert "CHUTE_ALLOW_OPEN" in (ROOT / "Dockerfile").read_text().split("ENV CHUTE_ALLOW_OPEN")[0][-600:], \
        "a comment just above says what it means"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _default(value: str) -> str:
    """What ``${NAME:-default}`` is when NAME is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_compose_publishes_only_the_api() -> None:
    services = _compose()["services"]
    published = {name: service.get("ports", []) for name, service in services.items() if service.get("ports")}
    assert set(published) == {"api"}, f"only the API faces the network: {published}"
    for port in published["api"]:
        assert str(port).rsplit(":", 1)[-1] == "8000"
    rabbit = services["rabbitmq"]
    assert not any("15672" in str(p) for p in rabbit.get("ports", [])), "no management UI with a default password"


def test_compose_needs_keys_unless_told_otherwise() -> None:
    api = _compose()["services"]["api"]
    env = api["environment"]
    assert "--host" in api["command"] and "0.0.0.0" in api["command"]
    assert "CHUTE_API_KEYS" in env, "the API key setting is passed through"
    assert _default(env["CHUTE_ALLOW_OPEN"]) == "0", "open only when the operator sets it"
    probe = " ".join(api["healthcheck"]["test"])
    assert "/readyz" in probe and "Authorization" in probe, "the probe sends a key, as /readyz needs one"


# --- 7. dependencies past their known holes ----------------------------------------------------------------
FLOORS = {
    "starlette": "0.49.1",         # Range header parsed by a backtracking regex in FileResponse (downloads)
    "fastapi": "0.120.1",          # the first that accepts that starlette
    "pypdf": "6.7.1",              # FlateDecode: output capped in 6.0.0, recovery loop capped in 6.7.1
    "python-multipart": "0.0.27",  # MultipartParser(max_header_size=…)
    "h11": "0.16",                 # malformed chunk footers accepted (request smuggling)
}


def test_dependencies_are_pinned_past_their_known_holes() -> None:
    declared = {}
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        declared[requirement.name.lower()] = requirement
    for name, floor in FLOORS.items():
        assert name in declared, f"{name} is not pinned in pyproject.toml"
        lower = [Version(s.version) for s in declared[name].specifier if s.operator in (">=", ">", "==", "~=")]
        assert lower and max(lower) >= Version(floor), f"{name}{declared[name].specifier}: needs >= {floor}"
        assert Version(version(name)) >= Version(floor), f"the installed {name} is older than {floor}"
