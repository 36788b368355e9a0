"""Where a worker gets its jobs: the port every source implements, and the message it hands out.

Three adapters: ``amqp`` (RabbitMQ through kombu, for many machines), ``database`` (the jobs table is
the queue: the embedded default, no server to install) and ``memory`` (the testing kit). The worker
loop (``chute.worker``) sees only this port."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chute.models import Job


@dataclass(frozen=True)
class JobMessage:
    """One fetched "job X is due": a RabbitMQ delivery, a reserved row, or an in-memory entry."""

    job_id: str
    #: the source handed it out before, to a consumer that went away (RabbitMQ's redelivered flag);
    #: told in the log only: whether the job runs again is the lease's decision (``lifecycle.claim``)
    redelivered: bool = False
    #: what the source needs to ack or requeue it (a kombu message, a reservation time); opaque here
    handle: Any = field(default=None, compare=False)


class JobSource(Protocol):
    """The port. Every method is called from the worker loop's own thread, but for ``wake``."""

    def fetch(self, limit: int, timeout: float) -> list[JobMessage]:
        """Up to ``limit`` messages, waiting at most ``timeout`` seconds for the first; [] when none.
        A source whose server is unreachable logs it, reconnects on a later call and returns []."""
        ...

    def ack(self, messages: Sequence[JobMessage]) -> None:
        """Their outcome (or claim) is committed: the source may forget them."""
        ...

    def requeue(self, messages: Sequence[JobMessage]) -> None:
        """Hand them back, unclaimed, for any worker to fetch again."""
        ...

    def dead_letter(self, message: JobMessage, reason: str, job: Job | None = None) -> None:
        """Keep a copy of a message that will never run again (a RabbitMQ dead-letter queue); the job row
        in ``failed`` is the record either way."""
        ...

    def tune(self, fast: bool) -> None:
        """Handlers are quick (milliseconds): fetch deep; or slow: fetch shallow and leave the rest to
        other workers."""
        ...

    def wake(self) -> None:
        """From any thread: a ``fetch`` waiting now should return (an attempt finished, a job is due)."""
        ...

    def close(self) -> None: ...

