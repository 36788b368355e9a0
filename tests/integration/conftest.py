"""Integration fixtures: a Chute in this process (API through a test client, a worker thread with
real child processes), `chute` subprocesses, and a TCP proxy the test can cut and restore."""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chute.runtime import Runtime
from chute.worker import Worker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BEHAVIOURS = HERE / "handlers"


class Chute:
    """A runtime, its API (test client, outbox running) and any number of in-process workers."""

    def __init__(self, rt: Runtime) -> None:
        from fastapi.testclient import TestClient

        from chute.api import create_app

        self.rt = rt
        self.client = TestClient(create_app(rt))
        self.client.__enter__()
        self._workers: list[tuple[Worker, threading.Thread]] = []

    def start_worker(self, concurrency: int = 2, **kwargs: Any) -> Worker:
        worker = self.rt.worker(concurrency)
        for key, value in kwargs.items():
            setattr(worker, key, value)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        assert worker.ready.wait(20), "the worker did not connect"
        self._workers.append((worker, thread))
        return worker

    def stop_workers(self) -> None:
        for worker, _ in self._workers:
            worker.stop()
        for _, thread in self._workers:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a worker did not stop"
        self._workers.clear()

    def upload(self, name: str, content: bytes = b"x", **data: Any) -> str:
        response = self.client.post("/uploads", files={"file": (name, content)}, data=data)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get(f"/jobs/{job_id}").json()
        return body

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = self.client.get(f"/jobs/{job_id}/attempts").json()
        return body

    def finished(self, job_id: str, wait: Callable[..., Any], timeout: float = 30) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in ("processed", "failed") else None

        result: dict[str, Any] = wait(done, timeout, 0.05, message=f"job {job_id} to finish")
        return result

    def close(self) -> None:
        self.stop_workers()
        self.client.__exit__(None, None, None)
        self.rt.close()


@pytest.fixture
def make_chute(settings_for: Callable[..., Any]) -> Iterator[Callable[..., Chute]]:
    made: list[Chute] = []

    def make(**overrides: Any) -> Chute:
        values: dict[str, Any] = {"handlers": BEHAVIOURS, "relay_interval": 0.1, "lease_seconds": 3.0}
        values.update(overrides)
        chute = Chute(Runtime.build(settings_for(**values)))
        made.append(chute)
        return chute

    yield make
    for chute in made:
        chute.close()


@pytest.fixture(params=["database", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def source(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Each test that takes it runs twice: on the database as the queue (the embedded default, no
    broker) and on RabbitMQ. Its value is the settings that select the source."""
    if request.param == "database":
        yield {}
        return
    amqp_url: str = request.getfixturevalue("amqp_url")
    prefix = f"test-{secrets.token_hex(4)}"
    yield {"broker_url": amqp_url, "queue_prefix": prefix}
    from kombu.connection import Connection

    with Connection(amqp_url, connect_timeout=3) as conn:
        for name in (f"{prefix}.work", f"{prefix}.dead"):
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(name)


def peek_dead_letters(amqp_url: str, queue: str) -> list[Any]:
    """Take every message off a RabbitMQ queue (to inspect the dead letters)."""
    from kombu.connection import Connection

    messages = []
    with Connection(amqp_url, connect_timeout=3) as conn:
        channel = conn.channel()
        while True:
            message = channel.basic_get(queue=queue, no_ack=True)
            if message is None:
                return messages
            messages.append(message)


@pytest.fixture
def dead_letters(amqp_url: str) -> Callable[[str], list[Any]]:
    return lambda queue: peek_dead_letters(amqp_url, queue)


class Proc:
    """`chute ARGS` as a real process; its output goes to a log file shown when a test fails."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.log = cwd / f"chute-{args[0]}-{time.monotonic_ns()}.log"
        self._out = self.log.open("w")
        self.popen = subprocess.Popen([sys.executable, "-m", "chute.cli", *args], env=env, cwd=cwd, text=True,
                                      stdout=self._out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()
        return self.popen.returncode


@pytest.fixture
def chute_proc(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(args, env, tmp_path)
        started.append(proc)
        return proc

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for proc in started:
        proc.stop()
        if failed:
            sys.stderr.write(f"--- {proc.log.name} ---\n{proc.output()}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def process_env(settings: Any, **extra: str) -> dict[str, str]:
    """The environment a `chute` subprocess needs to share this test's database, storage and broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_")}
    env.update({
        "CHUTE_VAR_DIR": str(settings.var_dir), "CHUTE_DATABASE_URL": settings.db_url,
        "CHUTE_BROKER_URL": settings.broker_url, "CHUTE_HANDLERS": str(settings.handlers),
        "CHUTE_QUEUE_PREFIX": settings.queue_prefix, "CHUTE_LEASE_SECONDS": str(settings.lease_seconds),
        "CHUTE_RELAY_INTERVAL": str(settings.relay_interval), "CHUTE_WORKER_CONCURRENCY": "2",
        "CHUTE_SHUTDOWN_GRACE": "5",  # past it, teardown hands long test jobs back instead of waiting
    })
    env.update(extra)
    return env


@pytest.fixture
def env_for() -> Callable[..., dict[str, str]]:
    return process_env


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; ``cut()`` drops every connection and refuses new ones
    until ``restore()``: the broker, as the clients see it, goes away and comes back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.restore()
        self._thread.start()

    def restore(self) -> None:
        with self._lock:
            if self._listener is None:
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", self.port))
                listener.listen(64)
                listener.setblocking(False)
                self._listener = listener

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for a, b in self._pairs:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self._pairs.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
                pairs = list(self._pairs)
            selector = selectors.DefaultSelector()
            try:
                if listener is not None:
                    selector.register(listener, selectors.EVENT_READ, None)
                for a, b in pairs:
                    selector.register(a, selectors.EVENT_READ, b)
                    selector.register(b, selectors.EVENT_READ, a)
            except (ValueError, OSError):
                selector.close()
                continue
            for key, _ in selector.select(timeout=0.05):
                self._ready(key.fileobj, key.data)  # type: ignore[arg-type]
            selector.close()

    def _ready(self, sock: socket.socket, peer: socket.socket | None) -> None:
        with self._lock:
            if peer is None:
                if sock is not self._listener:
                    return
                try:
                    client, _ = sock.accept()
                    upstream = socket.create_connection(self.target, timeout=3)
                except OSError:
                    return
                client.setblocking(True)
                self._pairs.append((client, upstream))
                return
            if not any(sock in pair for pair in self._pairs):
                return
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        with self._lock:
            for pair in [p for p in self._pairs if sock in p]:
                self._pairs.remove(pair)
                for s in pair:
                    s.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[tuple[str, int]], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(target: tuple[str, int]) -> TcpProxy:
        proxy = TcpProxy(target)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
