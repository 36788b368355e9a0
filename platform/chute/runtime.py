"""Wiring: settings in, the long-lived parts out (database, storage, handlers, job source, relay, notifier)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from chute.broker import Broker, Publisher
from chute.db import Database
from chute.doorbell import Doorbell
from chute.errors import ConfigError
from chute.executor import Executor, ProcessExecutor
from chute.jobs import Clock, JobService, TransitionHook
from chute.models import utcnow
from chute.registry import Registry, load_handlers
from chute.relay import JobPublisher, Relay
from chute.retention import Retention
from chute.settings import Settings
from chute.sources import JobSource
from chute.sources.memory import MemoryQueue
from chute.storage import Storage
from chute.worker import Fences, Worker

if TYPE_CHECKING:
    from chute.notify import DeliveryHook, DeliveryStore, Notifier, Transport


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("alembic", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _safe_url(url: str) -> str:
    """The database URL for a message: the password hidden; just its scheme when it will not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.partition(":")[0] + "://…"


@dataclass
class Runtime:
    settings: Settings
    db: Database
    jobs: JobService
    storage: Storage
    registry: Registry
    #: RabbitMQ, when ``CHUTE_BROKER_URL`` names it; None when the database (or memory) is the queue
    broker: Broker | None
    relay: Relay
    deliveries: DeliveryStore
    #: the job service's hook that makes a delivery row per recipient when a job ends
    mail_hook: DeliveryHook
    #: set when a job of this process is due at once (an upload, a re-run): a waiting fetch looks again
    wakeup: threading.Event
    #: the testing kit's in-memory queue (``CHUTE_BROKER_URL=memory://``)
    memory: MemoryQueue | None = None
    #: removes old finished jobs (``CHUTE_RETENTION_DAYS``); run by the relay
    retention: Retention | None = None
    hooks: list[TransitionHook] = field(default_factory=list)
    #: wakes the database source's workers in other processes on this host (None on other queues)
    doorbell: Doorbell | None = None

    @classmethod
    def build(cls, settings: Settings, *, migrate: bool = True, clock: Clock = utcnow) -> Runtime:
        from chute.notify import DeliveryHook, DeliveryStore

        registry = load_handlers(settings.handlers)
        try:
            db = Database(settings.db_url)
        except (ImportError, SQLAlchemyError, ValueError, OSError) as exc:  # no driver installed, a bad path
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, ImportError):
                reason = f"its driver is not installed ({reason})"
            raise ConfigError(f"CHUTE_DATABASE_URL: cannot use {_safe_url(settings.db_url)}: {reason}") from None
        if migrate:
            try:
                db.migrate()
            except OperationalError as exc:
                reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc).splitlines()[0]
                raise ConfigError(f"CHUTE_DATABASE_URL: cannot use {db.engine.url.render_as_string()}: "
                                  f"{reason}") from None
        mail_hook = DeliveryHook(registry, defaults=settings.notify_default, mail_from=settings.mail_from,
                                 public_url=settings.public_url, domains=settings.notify_domains,
                                 reruns=settings.notify_reruns)
        jobs = JobService(db, hooks=[mail_hook], clock=clock)
        deliveries = DeliveryStore(db, attempts=settings.notify_attempts, backoff=settings.notify_backoff,
                                   max_backoff=settings.notify_max_backoff, lease=settings.notify_lease)
        wakeup = threading.Event()
        broker = memory = None
        publisher: JobPublisher | None = None
        if settings.queue == "amqp":
            broker = Broker(settings.broker_url, settings.queue_type, settings.queue_prefix)
            publisher = Publisher(broker)
        elif settings.queue == "memory":
            publisher = memory = MemoryQueue()
        storage = Storage(settings.files_dir)
        retention = Retention(jobs, storage, settings.retention_days) if settings.retention_days else None
        doorbell = Doorbell(settings.db_url) if settings.queue == "sql" else None
        relay = Relay(jobs, publisher, interval=settings.relay_interval, grace=settings.publish_grace, wakeup=wakeup,
                      threaded=memory is None, housekeeping=retention.sweep if retention else None,
                      ring=doorbell.ring if doorbell else None)
        return cls(settings, db, jobs, storage, registry, broker, relay, deliveries, mail_hook, wakeup, memory,
                   retention, jobs.hooks, doorbell)

    @property
    def scratch(self) -> Path:
        return self.settings.var_dir / "scratch"

    @property
    def publish_grace(self) -> float:
        """How long a fresh upload waits before the relay publishes it itself: none when its row is the
        message (the database source), the grace when the API publishes it at once."""
        return 0.0 if self.settings.queue == "sql" else self.settings.publish_grace

    def source(self, concurrency: int) -> JobSource:
        from chute.sources.database import DatabaseSource

        if self.broker is not None:
            from chute.sources.amqp import AmqpSource

            return AmqpSource(self.broker, concurrency)
        if self.memory is not None:
            return self.memory
        return DatabaseSource(self.jobs, self.wakeup, poll=self.settings.poll_interval,
                              visibility=self.settings.lease_seconds, doorbell=self.doorbell)

    @property
    def describe_queue(self) -> str:
        if self.broker is not None:
            return f"RabbitMQ at {self.broker.safe_url}"
        if self.memory is not None:
            return "an in-memory queue"
        return f"the database ({self.db.engine.url.render_as_string(hide_password=True)})"

    def worker(self, concurrency: int | None = None, executor: Executor | None = None) -> Worker:
        concurrency = concurrency or self.settings.worker_concurrency
        executor = executor or ProcessExecutor(concurrency, self.settings.handlers, self.registry)
        return Worker(self.jobs, self.source(concurrency), self.registry, self.storage, executor,
                      concurrency=concurrency, scratch=self.scratch, lease=self.settings.lease_seconds,
                      shutdown_grace=self.settings.shutdown_grace, describe=self.describe_queue, fences=self.fences)

    @property
    def fences(self) -> Fences:
        return Fences(self.settings.handler_memory_mb, self.settings.max_result_bytes)

    def notifier(self, transport: Callable[[], Transport] | None = None, *, describe: str = "",
                 reconnect_max: float = 30.0, recover_every: float = 5.0) -> Notifier:
        """The notifier over this database: SMTP (``CHUTE_SMTP_URL``) or ``.eml`` files unless
        ``transport`` says otherwise. A job that ends in this process wakes it at once."""
        from chute.notify import Notifier, templates_for, transport_for

        if transport is None:
            transport, describe = transport_for(self.settings)
        s = self.settings
        notifier = Notifier(self.deliveries, templates_for(s), transport, mail_from=s.mail_from,
                            batch=s.notify_batch, poll=s.notify_poll, describe=describe, reconnect_max=reconnect_max,
                            recover_every=recover_every)
        self.mail_hook.listeners.append(notifier.wake)
        return notifier

    def close(self) -> None:
        if self.doorbell is not None:
            self.doorbell.close()
        self.deliveries.close()
        self.db.dispose()
