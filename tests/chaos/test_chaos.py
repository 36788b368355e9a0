"""The chaos run at a reduced size, on both job sources: workers SIGKILLed and restarted at random, the
RabbitMQ connection cut twice, the SMTP server stopped for a while; nothing lost, nothing stuck, every
job ended as its handler dictates, every email received once (uncertain ones counted and shown).

The harness is ``tests/chaos/harness.py`` (shared with ``bench/chaos.py``, which runs the full size).
``CHAOS_SEED`` replays a run's plan (its mix of jobs and its kill schedule; the timing is real)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow


def _harness() -> ModuleType:
    path = Path(__file__).resolve().with_name("harness.py")
    spec = importlib.util.spec_from_file_location("chute_chaos_harness", path)
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = _harness()


@pytest.mark.parametrize("source", [pytest.param("rabbitmq", marks=pytest.mark.rabbitmq), "database"])
def test_a_chaos_run_loses_nothing(source: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # RabbitMQ: the amqp_url fixture skips on a laptop without it and fails under CI=true
    amqp_url: str | None = request.getfixturevalue("amqp_url") if source == "rabbitmq" else None
    seed = int(os.environ["CHAOS_SEED"]) if os.environ.get("CHAOS_SEED") else None
    report = harness.run_chaos(harness.REDUCED, tmp_path, amqp_url=amqp_url, seed=seed)
    print(report.render())
    failures = report.failures()
    assert not failures, f"{report.render()}\n{report.log_tails}"
