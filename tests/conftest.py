"""Shared fixtures: real services (RabbitMQ, PostgreSQL) that fail under CI and skip on a laptop,
a live uvicorn server, and waiting on a condition with a deadline instead of sleeping."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chute.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
AMQP_URL = os.environ.get("CHUTE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get("CHUTE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _missing(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable: {type(exc).__name__}: {exc}"
    if CI:
        pytest.fail(message + " (CI=true: a test that needs a service fails when it is missing)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    from kombu.connection import Connection

    conn = Connection(AMQP_URL, connect_timeout=3)
    try:
        conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        _missing(f"RabbitMQ at {AMQP_URL}", exc)
    finally:
        conn.release()
    return AMQP_URL


@pytest.fixture
def queue_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """Queue names of this test alone; deleted afterwards when they were made on RabbitMQ."""
    prefix = f"test-{secrets.token_hex(4)}"
    yield prefix
    if "amqp_url" in request.fixturenames:
        from kombu.connection import Connection

        with Connection(AMQP_URL, connect_timeout=3) as conn:
            channel = conn.channel()
            for name in (f"{prefix}.work", f"{prefix}.dead"):
                try:
                    channel.queue_delete(name)
                except Exception:
                    channel = conn.channel()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        _missing(f"PostgreSQL at {POSTGRES_URL}", exc)
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"chute_test_{secrets.token_hex(4)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    """Settings rooted in this test's temp dir, with the project's handlers unless told otherwise."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"var_dir": tmp_path / "var", "handlers": ROOT / "handlers",
                                  "lease_seconds": 30.0, "relay_interval": 0.2}
        values.update(overrides)
        return Settings(**values)

    return make


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def wait() -> Callable[..., Any]:
    return wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, message="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server() -> Callable[[Any], LiveServer]:
    return LiveServer


@pytest.fixture
def port() -> int:
    """A free loopback port."""
    return free_port()
