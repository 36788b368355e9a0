"""Test a handler without a broker: ``run_handler`` calls it as a worker would; ``ChuteApp`` is the
whole API on a stub broker whose ``drain()`` runs every queued job, retries included, at once."""

from chute.testing.app import ChuteApp, StubPublisher
from chute.testing.handlers import HandlerRun, run, run_handler

__all__ = ["ChuteApp", "HandlerRun", "StubPublisher", "run", "run_handler"]
