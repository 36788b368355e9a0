"""Retention: finished jobs older than ``CHUTE_RETENTION_DAYS`` go, files first, then rows, in small
batches, so the disk does not fill forever and no sweep holds the database for long.

Files go before rows: a sweep cut off between the two leaves rows whose files are gone (the next
sweep finishes them), never files no row points to."""

from __future__ import annotations

import logging
from datetime import timedelta

from chute.jobs import JobService
from chute.storage import Storage

log = logging.getLogger("chute.retention")
BATCH = 100


class Retention:
    def __init__(self, jobs: JobService, storage: Storage, days: float) -> None:
        self.jobs, self.storage, self.days = jobs, storage, days

    def sweep(self, batches: int = 10) -> int:
        """Remove up to ``batches`` batches of expired jobs; returns how many went."""
        cutoff = self.jobs.now() - timedelta(days=self.days)
        removed = 0
        for _ in range(batches):
            expired = self.jobs.finished_before(cutoff, BATCH)
            if not expired:
                break
            for _job_id, key in expired:
                self.storage.delete(key)
            self.jobs.delete([job_id for job_id, _ in expired])
            removed += len(expired)
        if removed:
            log.info("event=retention removed=%d older_than_days=%g", removed, self.days)
        return removed
