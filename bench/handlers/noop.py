"""The no-op handler bench/dispatch.py measures the dispatcher with."""

from __future__ import annotations

from chute import Context, Upload, handler


@handler("*/*")
def noop(upload: Upload, ctx: Context) -> dict[str, object]:
    """Does nothing, so what is measured is Chute."""
    return {}
