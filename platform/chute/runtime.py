"""Wiring: settings in, the long-lived parts out (database, storage, handlers, broker, outbox, notifier)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError

from chute.broker import Broker, Publisher
from chute.db import Database
from chute.errors import ConfigError
from chute.executor import Executor, ProcessExecutor
from chute.jobs import JobStore, TransitionHook
from chute.outbox import Outbox
from chute.registry import Registry, load_handlers
from chute.settings import Settings
from chute.storage import Storage
from chute.worker import Worker

if TYPE_CHECKING:
    from chute.notify import DeliveryHook, DeliveryStore, Notifier, Transport


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("alembic", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: JobStore
    storage: Storage
    registry: Registry
    broker: Broker
    outbox: Outbox
    deliveries: DeliveryStore
    #: the job store's hook that makes a delivery row per recipient when a job ends
    mail_hook: DeliveryHook
    hooks: list[TransitionHook] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, *, migrate: bool = True, publisher: Publisher | None = None) -> Runtime:
        from chute.notify import DeliveryHook, DeliveryStore

        registry = load_handlers(settings.handlers)
        db = Database(settings.db_url)
        if migrate:
            try:
                db.migrate()
            except OperationalError as exc:
                reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc).splitlines()[0]
                raise ConfigError(f"CHUTE_DATABASE_URL: cannot use {db.engine.url.render_as_string()}: "
                                  f"{reason}") from None
        mail_hook = DeliveryHook(registry, defaults=settings.notify_default, mail_from=settings.mail_from,
                                 public_url=settings.public_url)
        store = JobStore(db, hooks=[mail_hook])
        deliveries = DeliveryStore(db, attempts=settings.notify_attempts, backoff=settings.notify_backoff,
                                   max_backoff=settings.notify_max_backoff, lease=settings.notify_lease)
        broker = Broker(settings.broker, settings.queue_type, settings.queue_prefix)
        outbox = Outbox(store, publisher or Publisher(broker), interval=settings.relay_interval,
                        lease=settings.lease_seconds)
        return cls(settings, db, store, Storage(settings.files_dir), registry, broker, outbox, deliveries,
                   mail_hook, store.hooks)

    @property
    def scratch(self) -> Path:
        return self.settings.var_dir / "scratch"

    def worker(self, concurrency: int | None = None, executor: Executor | None = None) -> Worker:
        concurrency = concurrency or self.settings.worker_concurrency
        executor = executor or ProcessExecutor(concurrency, self.settings.handlers, self.registry)
        return Worker(self.store, self.broker, self.registry, self.storage, executor,
                      concurrency=concurrency, scratch=self.scratch, lease=self.settings.lease_seconds,
                      shutdown_grace=self.settings.shutdown_grace)

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
        self.deliveries.close()
        self.db.dispose()
