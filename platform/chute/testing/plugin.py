"""pytest plugin (registered by the ``chute`` package): the ``chute_app`` fixture."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chute.testing.app import ChuteApp


@pytest.fixture
def chute_app(tmp_path: Path) -> Iterator[ChuteApp]:
    """The API on an in-memory queue with a temp SQLite; the project's handlers (CHUTE_HANDLERS or ./handlers)."""
    app = ChuteApp(tmp_path / "var", handlers=Path(os.environ.get("CHUTE_HANDLERS", "handlers")))
    try:
        yield app
    finally:
        app.close()
