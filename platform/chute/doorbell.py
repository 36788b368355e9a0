"""Wakes the embedded queue's workers in other processes on this host as soon as a job is recorded.

With the database as the queue, ``chute api`` and ``chute worker`` are separate processes that share
only the database, so a worker saw a new job only at its next poll (``CHUTE_POLL_INTERVAL``, 0.25 s):
the upload waited, and every client polling for its result asked again meanwhile. Here each waiting
worker binds a Unix datagram socket in Linux's abstract namespace (no file to clean up), named after
the database URL, and the API sends each one a byte after a commit. Best effort by design: a ring
that finds nobody, a full socket buffer, another host, another OS: the poll still finds the job."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("chute.doorbell")
#: listening workers per database and host that are rung directly (more still find work by polling)
SLOTS = 16
#: how often a ringer looks again for workers that started listening since
RESCAN = 1.0


class Doorbell:
    """One per runtime: ``listen`` in a worker, ``ring`` after an upload's commit."""

    def __init__(self, database_url: str) -> None:
        self._prefix = b"\0chute-" + hashlib.sha256(database_url.encode()).hexdigest()[:20].encode() + b"-"
        self._sender: socket.socket | None = None
        self._live: list[bytes] = []
        self._scanned = 0.0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._closed = threading.Event()

    def _address(self, slot: int) -> bytes:
        return self._prefix + str(slot).encode()

    # --- the worker's side -----------------------------------------------------------------------
    def listen(self, on_ring: Callable[[], None]) -> bool:
        """Call ``on_ring`` from a thread for every ring, binding the first free slot the first time (one
        socket per doorbell, however many sources listen); False when no slot could be bound (all
        taken, or no abstract sockets here): then the poll alone serves."""
        with self._lock:
            self._callbacks.append(on_ring)
            if self._listener is not None:
                return True
            if self._closed.is_set():
                return False
            for slot in range(SLOTS):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    sock.bind(self._address(slot))
                except OSError:
                    sock.close()
                    continue
                sock.settimeout(RESCAN)
                self._listener = sock
                threading.Thread(target=self._receive, args=(sock,), name="chute-doorbell", daemon=True).start()
                return True
        log.info("no doorbell slot free for this worker: it sees other processes' uploads by polling")
        return False

    def _receive(self, sock: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                try:
                    sock.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    return  # closed
                for callback in list(self._callbacks):
                    callback()
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    # --- the API's side ----------------------------------------------------------------------------
    def ring(self) -> None:
        """A byte to every listening worker; never blocks, never raises."""
        with self._lock:
            now = time.monotonic()
            if now - self._scanned >= RESCAN:
                self._scanned = now
                self._live = [self._address(slot) for slot in range(SLOTS)]  # try them all: keep who answers
            if not self._live:
                return
            if self._closed.is_set():
                return
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            answered = []
            for address in self._live:
                try:
                    self._sender.sendto(b"!", address)
                except BlockingIOError:  # its buffer is full of rings it has not read: it is awake
                    answered.append(address)
                except OSError:  # nobody bound there
                    continue
                else:
                    answered.append(address)
            self._live = answered

    def close(self) -> None:
        """Idempotent; the listener's thread closes its socket too (within ``RESCAN``) if it is mid-wait."""
        self._closed.set()
        with self._lock:
            sockets, self._listener, self._sender = (self._listener, self._sender), None, None
        for sock in sockets:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
