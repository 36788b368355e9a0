"""The HTTP server ``chute serve`` and ``chute api`` run: uvicorn on httptools, with the two limits
on a request head that neither gives (a request head being the request line and its headers).

uvicorn's httptools protocol buffers a head without bound (a 100 MB header costs 200 MB of memory)
and starts no timer before the first request, so one client can hold memory or, sending a byte now
and then (slowloris), a connection for ever. ``GuardedHttpTools`` cuts a connection whose head is
longer than ``HEAD_LIMIT`` or has not ended ``CHUTE_REQUEST_HEAD_TIMEOUT`` seconds after it began.
A body's stalls are the upload route's business (``CHUTE_UPLOAD_IDLE_TIMEOUT``); idle keep-alive
connections are uvicorn's (``timeout_keep_alive``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chute.settings import Settings

log = logging.getLogger("chute.api")
#: the most bytes a request line and headers may take together (browsers stay far below; nginx: 32 KiB)
HEAD_LIMIT = 64 * 1024


class GuardedHttpTools(HttpToolsProtocol):
    """httptools with a size cap and a deadline on each request head."""

    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_deadline: asyncio.TimerHandle | None = None
        self._arm()  # the first request's head: uvicorn starts no timer before it

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # may begin a head (``on_message_begin``) or end one
        if self._head_deadline is not None:
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT and not self.transport.is_closing():
                log.warning("event=head-refused client=%s note=a request head over %d bytes", self._peer(),
                            HEAD_LIMIT)
                self._disarm()
                self.send_400_response(f"the request line and headers are longer than {HEAD_LIMIT} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:  # the next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_bytes = 0
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            log.warning("event=head-timeout client=%s note=no whole request head within %g s", self._peer(),
                        self.head_timeout)
            self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"


def config_for(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """The server's configuration: ``GuardedHttpTools`` with the settings' deadline."""
    protocol = type("GuardedHttpTools", (GuardedHttpTools,), {"head_timeout": settings.request_head_timeout})
    return uvicorn.Config(app, host=host, port=port, log_level="warning", http=protocol)


def run(app: Any, settings: Settings, host: str, port: int) -> None:
    uvicorn.Server(config_for(app, settings, host, port)).run()
