"""A request head (request line and headers) has a deadline and a size cap on the server Chute runs:
a client that trickles its headers (slowloris) or sends endless ones holds neither a connection nor
memory for long. Runs the server the way ``chute serve`` and ``chute api`` do (``chute.api.server``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from chute.api import create_app
from chute.api.server import HEAD_LIMIT, config_for
from chute.testing import ChuteApp

HANDLERS = Path(__file__).resolve().parents[2] / "handlers"
TIMEOUT = 0.6


@pytest.fixture
def server(tmp_path: Path, port: int, wait: Callable[..., Any]) -> Iterator[int]:
    kit = ChuteApp(tmp_path / "var", handlers=HANDLERS, request_head_timeout=TIMEOUT)
    served = uvicorn.Server(config_for(create_app(kit.runtime, relay=False), kit.settings, "127.0.0.1", port))
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    wait(lambda: served.started, 10, message="the server to start")
    try:
        yield port
    finally:
        served.should_exit = True
        thread.join(10)
        kit.close()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection (EOF or reset) before ``within`` seconds pass."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def answer(sock: socket.socket) -> bytes:
    """One whole response to a GET /healthz: its status line, headers and body."""
    data = b""
    while not data.endswith(b'{"status":"ok"}'):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def healthy(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(100).startswith(b"HTTP/1.1 200")


def test_a_head_that_stalls_is_cut_at_the_deadline(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /uploads HTTP/1.1\r\nHost: x\r\n")
        assert closed_by_server(sock, 10 * TIMEOUT)
        assert time.monotonic() - started >= TIMEOUT * 0.9
    assert healthy(server)


def test_a_head_trickled_a_byte_at_a_time_is_cut_at_the_deadline(server: int) -> None:
    """Each byte resets an idle timer, never this deadline: the head as a whole must arrive in time."""
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        cut = False
        while time.monotonic() - started < 10 * TIMEOUT:
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            time.sleep(TIMEOUT / 10)
        assert cut or closed_by_server(sock, TIMEOUT), "the trickling client was never cut off"
        assert time.monotonic() - started < 5 * TIMEOUT


def test_an_endless_head_is_refused_before_it_fills_memory(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        # what the kernel's socket buffers on both ends took before the server's close reached us
        assert sent < 16 * 1024 * 1024, f"{sent} bytes of one header were taken in"
    assert healthy(server)


def test_a_head_within_the_limits_is_served_and_the_connection_kept(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        for _ in range(2):  # the deadline starts again for the next request on the connection
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * (HEAD_LIMIT // 2) + b"\r\n\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 200")
            time.sleep(TIMEOUT * 1.5)  # past the deadline, but the head had arrived: the connection stays
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(sock).startswith(b"HTTP/1.1 200")
