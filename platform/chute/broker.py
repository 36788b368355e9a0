"""RabbitMQ through kombu: connections, the work and dead-letter queues, and publishing with confirms
in batches. (The consuming side is ``chute.sources.amqp``.)"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from kombu.connection import Connection
from kombu.entity import Queue

from chute.errors import BrokerUnavailable

log = logging.getLogger("chute.broker")
CONNECT_TIMEOUT = 2.0
CONFIRM_TIMEOUT = 10.0


def job_message(job_id: str) -> bytes:
    return json.dumps({"job": job_id}).encode()


class Broker:
    """A RabbitMQ server (``amqp://``) and the queues Chute uses on it."""

    def __init__(self, url: str, queue_type: str = "quorum", prefix: str = "chute") -> None:
        self.url = url
        self.is_amqp = urlsplit(url).scheme in {"amqp", "amqps", "pyamqp"}
        arguments = {"x-queue-type": queue_type} if self.is_amqp else {}
        self.work = f"{prefix}.work"
        self.dead = f"{prefix}.dead"
        self.work_queue = Queue(self.work, routing_key=self.work, durable=True, queue_arguments=arguments)
        self.dead_queue = Queue(self.dead, routing_key=self.dead, durable=True, queue_arguments=arguments)

    def connection(self) -> Connection:
        return Connection(self.url, connect_timeout=CONNECT_TIMEOUT, heartbeat=30,
                          transport_options={"confirm_publish": False})

    def declare(self, conn: Connection) -> None:
        channel = conn.default_channel
        for queue in (self.work_queue, self.dead_queue):
            queue.bind(channel).declare()

    def ping(self) -> None:
        conn = self.connection()
        try:
            conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            raise BrokerUnavailable(f"{self.safe_url}: {exc}") from exc
        finally:
            conn.release()

    @property
    def safe_url(self) -> str:
        parts = urlsplit(self.url)
        if not parts.password:
            return self.url
        host = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=host).geturl()


class Publisher:
    """One connection, reused; ``publish`` returns once the broker has every message (publisher
    confirms) or raises ``BrokerUnavailable``. Thread-safe."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._conn: Connection | None = None
        self._channel: Any = None
        self._lock = threading.Lock()
        self._acked = 0
        self._nacked = False
        self._sent = 0

    def publish(self, bodies: Sequence[bytes], queue: str | None = None,
                headers: dict[str, Any] | None = None) -> None:
        self._deliver([(body, queue or self.broker.work, dict(headers or {})) for body in bodies])

    def publish_jobs(self, job_ids: Iterable[str]) -> None:
        self._deliver([(job_message(j), self.broker.work, {"x-chute-job": j}) for j in job_ids])

    def _deliver(self, items: list[tuple[bytes, str, dict[str, Any]]]) -> None:
        if not items:
            return
        with self._lock:
            try:
                channel = self._ensure()
                for body, queue, headers in items:
                    message = channel.prepare_message(body, 2, "application/json", "utf-8", headers, {})
                    channel.basic_publish(message, exchange="", routing_key=queue)
                    self._sent += 1
                if self.broker.is_amqp:
                    self._wait_confirms(channel)
            except Exception as exc:
                self._reset()
                raise BrokerUnavailable(f"{self.broker.safe_url}: {type(exc).__name__}: {exc}") from exc

    def _ensure(self) -> Any:
        if self._channel is None:
            conn = self.broker.connection()
            conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
            channel = conn.channel()
            self._conn = conn
            self.broker.declare(conn)
            if self.broker.is_amqp:
                channel.confirm_select()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
                self._acked = self._sent = 0
            self._channel = channel
        return self._channel

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._acked = max(self._acked, delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._nacked = True

    def _wait_confirms(self, channel: Any) -> None:
        from amqp import spec

        while self._acked < self._sent:
            try:
                channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=CONFIRM_TIMEOUT)
            except TimeoutError:
                raise BrokerUnavailable(f"no publisher confirm within {CONFIRM_TIMEOUT:g}s") from None
            if self._nacked:
                self._nacked = False
                raise BrokerUnavailable("the broker refused a message (nack)")

    def _reset(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # the connection is already broken; nothing to clean
                log.debug("closing a broken broker connection failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._reset()
