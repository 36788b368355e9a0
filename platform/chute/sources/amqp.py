"""RabbitMQ through kombu: for many machines. Consumes the work queue with a prefetch that follows the
handlers' speed, acknowledges in ``multiple`` acks where the delivery tags allow, reconnects with
backoff, and copies messages that will never run to the dead-letter queue.

Everything here runs on the worker loop's thread (kombu's channels are not thread-safe). A connection
error is this module's business alone: the loop sees an empty fetch; messages handed out on a lost
connection cannot be acknowledged any more and the broker redelivers them (the worker adopts the
redelivery of a job it is still running)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from kombu.connection import Connection
from kombu.exceptions import KombuError
from kombu.messaging import Consumer

from chute.broker import Broker, Publisher, job_message
from chute.errors import BrokerUnavailable
from chute.models import Job
from chute.sources import JobMessage

log = logging.getLogger("chute.sources.amqp")
NO_WAIT = 0.0001  # "only what is already here"; 0 would make py-amqp spin
#: the longest wait on the socket while attempts run: their results arrive on another thread, which
#: cannot interrupt a drain
TICK = 0.002
SLOW_PREFETCH, FAST_PREFETCH = 2, 128  # times the concurrency
MAX_PREFETCH = 1000
RECONNECT_MAX = 10.0


def _tag(message: JobMessage) -> int:
    tag: int = message.handle[1].delivery_tag
    return tag


class AmqpSource:
    def __init__(self, broker: Broker, concurrency: int) -> None:
        self.broker = broker
        self.concurrency = concurrency
        self.prefetch = SLOW_PREFETCH * concurrency
        self._conn: Connection | None = None
        self._channel: Any = None
        self._consumer: Any = None
        #: bumped on every reconnect: a message's handle carries the generation it came on
        self._generation = 0
        #: received from the broker, not yet handed to the worker
        self._inbox: list[JobMessage] = []
        #: handed to the worker, not yet acknowledged (this generation), by delivery tag
        self._held: dict[int, JobMessage] = {}
        self._retry_at = 0.0
        self._backoff = 0.5
        self._dead = Publisher(broker)
        self.connected = False

    # --- the port -----------------------------------------------------------------------------------
    def fetch(self, limit: int, timeout: float) -> list[JobMessage]:
        if self._conn is None and not self._connect(timeout):
            return []
        assert self._conn is not None
        if self._held:
            timeout = min(timeout, TICK)
        try:
            if len(self._inbox) < max(limit, 1):
                self._drain(self._conn, timeout)
            if self.broker.is_amqp:
                self._conn.heartbeat_check()
        except self._errors as exc:
            self._lost(exc)
            return []
        taken, self._inbox = self._inbox[:max(limit, 0)], self._inbox[max(limit, 0):]
        for message in taken:
            self._held[_tag(message)] = message
        return taken

    def ack(self, messages: Sequence[JobMessage]) -> None:
        """Every acked tag below the oldest message still outstanding goes in one ``multiple`` ack; the
        rest one by one. Messages of an earlier connection are skipped: the broker has redelivered them."""
        mine = [m for m in messages if m.handle[0] == self._generation]
        for message in mine:
            self._held.pop(_tag(message), None)
        if not mine:
            return
        outstanding = [*self._held, *(_tag(m) for m in self._inbox)]
        oldest = min(outstanding, default=None)
        below = [m for m in mine if oldest is None or _tag(m) < oldest]
        try:
            if len(below) > 1:
                max(below, key=_tag).handle[1].ack(multiple=True)
                mine = [m for m in mine if oldest is not None and _tag(m) >= oldest]
            for message in mine:
                message.handle[1].ack()
        except self._errors as exc:
            self._lost(exc)

    def requeue(self, messages: Sequence[JobMessage]) -> None:
        try:
            for message in messages:
                if message.handle[0] == self._generation:
                    self._held.pop(_tag(message), None)
                    message.handle[1].requeue()
        except self._errors as exc:
            self._lost(exc)

    def dead_letter(self, message: JobMessage, reason: str, job: Job | None = None) -> None:
        self._publish_dead(job_message(message.job_id), reason, job)

    def tune(self, fast: bool) -> None:
        """Fast handlers get a deep prefetch (big turns); slow ones a shallow one (a fair share between
        workers). Messages received beyond the shallow depth go back to the broker for other workers."""
        wanted = min((FAST_PREFETCH if fast else SLOW_PREFETCH) * self.concurrency, MAX_PREFETCH)
        if wanted == self.prefetch:
            return
        self.prefetch = wanted
        if self._channel is None:
            return
        try:
            self._channel.basic_qos(0, wanted, False)
            # RabbitMQ applies a per-consumer prefetch to consumers started after it: subscribe again.
            self._consumer.cancel()
            self._consumer.consume()
            if not fast and len(self._inbox) > wanted:
                for extra in self._inbox[wanted:]:
                    extra.handle[1].requeue()
                self._inbox = self._inbox[:wanted]
        except self._errors as exc:
            self._lost(exc)

    def wake(self) -> None:
        """A drain waits on the socket; the worker keeps its waits short while attempts run."""

    def close(self) -> None:
        if self._conn is not None:
            try:
                for message in self._inbox:
                    message.handle[1].requeue()
                if self._consumer is not None:
                    self._consumer.cancel()
            except self._errors:
                log.debug("the connection broke while closing; the broker requeues what we held", exc_info=True)
            self._release()
        self._dead.close()

    # --- the connection -----------------------------------------------------------------------------
    @property
    def _errors(self) -> tuple[type[BaseException], ...]:
        conn = self._conn
        extra = (conn.connection_errors + conn.channel_errors) if conn is not None else ()
        # KombuError: a message acked on a channel whose connection is gone (RecoverableConnectionError)
        return (OSError, BrokerUnavailable, KombuError, *extra)

    def _connect(self, timeout: float) -> bool:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, max(timeout, 0.0)))
            return False
        conn = self.broker.connection()
        try:
            conn.ensure_connection(max_retries=1, timeout=2)
            self.broker.declare(conn)
            channel = conn.channel()
            channel.basic_qos(0, self.prefetch, False)
            consumer = Consumer(channel, [self.broker.work_queue], on_message=self._on_message, no_ack=False)
            consumer.consume()
        except (OSError, KombuError, *conn.connection_errors, *conn.channel_errors) as exc:
            conn.release()
            self._retry_at = time.monotonic() + self._backoff
            log.warning("cannot reach the broker at %s (%s: %s); trying again in %.1fs", self.broker.safe_url,
                        type(exc).__name__, exc, self._backoff)
            self._backoff = min(self._backoff * 2, RECONNECT_MAX)
            return False
        self._conn, self._channel, self._consumer = conn, channel, consumer
        self._backoff = 0.5
        self.connected = True
        log.info("consuming %s on %s (prefetch %d)", self.broker.work_queue.name, self.broker.safe_url, self.prefetch)
        return True

    def _lost(self, exc: BaseException) -> None:
        """The connection broke: what we held is the broker's again (it redelivers it)."""
        log.warning("lost the broker connection (%s: %s); %d messages go back to the broker, reconnecting",
                    type(exc).__name__, exc, len(self._inbox) + len(self._held))
        self._release()
        self._retry_at = time.monotonic() + self._backoff

    def _release(self) -> None:
        conn, self._conn, self._channel, self._consumer = self._conn, None, None, None
        self._generation += 1
        self._inbox.clear()
        self._held.clear()
        self.connected = False
        if conn is not None:
            try:
                conn.release()
            except Exception:  # already broken; nothing to clean
                log.debug("closing a broken broker connection failed", exc_info=True)

    def _drain(self, conn: Connection, timeout: float) -> None:
        """Wait up to ``timeout`` for one event, then take every message already here (one event per
        ``drain_events`` call), so that one turn claims them all."""
        try:
            conn.drain_events(timeout=max(timeout, NO_WAIT))
            for _ in range(self.prefetch):
                conn.drain_events(timeout=NO_WAIT)
        except TimeoutError:
            pass

    def _on_message(self, message: Any) -> None:
        try:
            body = json.loads(message.body)
            job_id = body["job"]
            if not isinstance(job_id, str) or not job_id:
                raise ValueError("no job id")
        except (ValueError, KeyError, TypeError) as exc:
            self._publish_dead(message.body, f"undecodable message: {type(exc).__name__}: {exc}")
            message.ack()
            return
        redelivered = bool((message.delivery_info or {}).get("redelivered"))
        self._inbox.append(JobMessage(job_id, redelivered, (self._generation, message)))

    def _publish_dead(self, body: bytes | str, reason: str, job: Job | None = None) -> None:
        headers: dict[str, Any] = {"x-chute-reason": reason}
        if job is not None:
            headers.update({"x-chute-job": job.id, "x-chute-attempts": job.attempts,
                            "x-chute-error": (job.error or {}).get("type", "")})
        else:
            log.warning("dead-lettered a message: %s", reason)
        raw = body.encode() if isinstance(body, str) else body
        try:
            self._dead.publish([raw], queue=self.broker.dead, headers=headers)
        except BrokerUnavailable as exc:
            log.error("could not copy a message to %s (%s); the job row keeps the record", self.broker.dead, exc)
