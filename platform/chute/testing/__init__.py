"""Test a handler without a broker: ``run_handler`` calls it as a worker would; ``ChuteApp`` is the
whole API on an in-memory queue whose ``drain()`` runs the real worker loop over every queued job,
retries included, without waiting for their delays."""

from chute.testing.app import ChuteApp, KitClock
from chute.testing.handlers import HandlerRun, run, run_handler

__all__ = ["ChuteApp", "HandlerRun", "KitClock", "run", "run_handler"]
