"""One error hierarchy: callers catch what they can act on, and every message says what to fix."""

from __future__ import annotations


class ChuteError(Exception):
    """Base class for everything Chute raises on purpose."""


# Configuration and start-up
class ConfigError(ChuteError):
    """A setting is missing or wrong; the message is one line that names the setting."""


class RegistryError(ChuteError):
    """The handlers directory cannot be turned into a routing table."""


class HandlerImportError(RegistryError):
    """A module under the handlers path failed to import."""


class HandlerConflict(RegistryError):
    """Two handlers claim the same type (or name, or extension) at the same specificity."""


# Uploads
class UploadError(ChuteError):
    """An upload is refused; ``status_code`` is the HTTP answer it maps to."""

    status_code = 400


class MalformedUpload(UploadError):
    status_code = 400


class UploadTooLarge(UploadError):
    status_code = 413


class UnsupportedType(UploadError):
    status_code = 415

    def __init__(self, message: str, accepted: list[str]) -> None:
        super().__init__(message)
        self.accepted = accepted


class InvalidUploadField(UploadError):
    """A form field is missing or wrong; ``field`` names it for the 422's ``loc``."""

    status_code = 422
    kind = "value_error"

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


class MissingFile(InvalidUploadField):
    kind = "missing"

    def __init__(self, message: str = "the 'file' field is required") -> None:
        super().__init__(message, "file")


class FormTooLarge(UploadTooLarge):
    """More form fields, parts or field bytes than the CHUTE_MAX_* settings allow."""


class UploadTimeout(UploadError):
    """The body stalled past CHUTE_UPLOAD_IDLE_TIMEOUT, or took longer than CHUTE_UPLOAD_BODY_TIMEOUT."""

    status_code = 408


class InsufficientStorage(UploadError):
    """The disk (or the database's) is full: nothing of the upload is kept."""

    status_code = 507


# Running handlers
class Reject(ChuteError):
    """Raised by a handler: the file can never be processed, so fail the job now, without retries."""


class HandlerTimeout(ChuteError):
    """An attempt ran past its handler's timeout and was stopped."""


class HandlerCrashed(ChuteError):
    """The process running an attempt died (signal, out of memory, os._exit)."""


class PoolBroken(HandlerCrashed):
    """A handler process died and the pool stopped every attempt running beside it too: the attempt's
    own handler may be innocent, so it is retried whatever its policy covers."""


class JobCancelled(ChuteError):
    """An operator cancelled the job with ``kill=true``: its attempt's process was stopped."""


class InvalidResult(ChuteError):
    """A handler returned something that cannot be stored as JSON, or more of it than a job may keep."""


class MemoryLimitExceeded(Reject):
    """The handler's process went past its memory limit (``@handler(memory_mb=…)``): the same file
    would do it again, so the job fails at once, as a ``Reject``."""


# Jobs and the broker
class JobNotFound(ChuteError):
    pass


class InvalidTransition(ChuteError):
    """A status change the lifecycle does not allow (say, re-running a processed job)."""


class BrokerUnavailable(ChuteError):
    """The broker did not answer; the outbox keeps the work until it does."""
