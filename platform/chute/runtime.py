"""Wiring: settings in, the long-lived parts out (database, storage, handlers, broker, outbox)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from chute.broker import Broker, Publisher
from chute.db import Database
from chute.executor import Executor, ProcessExecutor
from chute.jobs import JobStore, TransitionHook
from chute.outbox import Outbox
from chute.registry import Registry, load_handlers
from chute.settings import Settings
from chute.storage import Storage
from chute.worker import Worker


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
    hooks: list[TransitionHook] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, *, migrate: bool = True, publisher: Publisher | None = None) -> Runtime:
        registry = load_handlers(settings.handlers)
        db = Database(settings.db_url)
        if migrate:
            db.migrate()
        store = JobStore(db)
        broker = Broker(settings.broker, settings.queue_type, settings.queue_prefix)
        outbox = Outbox(store, publisher or Publisher(broker), interval=settings.relay_interval,
                        lease=settings.lease_seconds)
        return cls(settings, db, store, Storage(settings.files_dir), registry, broker, outbox, store.hooks)

    @property
    def scratch(self) -> Path:
        return self.settings.var_dir / "scratch"

    def worker(self, concurrency: int | None = None, executor: Executor | None = None) -> Worker:
        concurrency = concurrency or self.settings.worker_concurrency
        executor = executor or ProcessExecutor(concurrency, self.settings.handlers, self.registry)
        return Worker(self.store, self.broker, self.registry, self.storage, executor,
                      concurrency=concurrency, scratch=self.scratch, lease=self.settings.lease_seconds)

    def close(self) -> None:
        self.db.dispose()
