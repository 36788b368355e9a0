"""Chute: a self-hosted function host for files. Handler authors need only what is exported here."""

from chute.context import Context, Upload
from chute.errors import ChuteError, HandlerCrashed, HandlerTimeout, Reject
from chute.registry import handler
from chute.retry import retry

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 - grouped by use, as dramatiq's is
    # Handlers
    "handler",
    "retry",
    "Upload",
    "Context",
    # Errors
    "Reject",
    "HandlerTimeout",
    "HandlerCrashed",
    "ChuteError",
]
