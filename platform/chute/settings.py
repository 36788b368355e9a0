"""Every CHUTE_ setting in one place, validated once at start-up so a typo fails fast and names itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from chute.addresses import in_domains, normalize_all, normalize_domain
from chute.errors import ConfigError

CommaList = Annotated[list[str], NoDecode]
AMQP_SCHEMES = {"amqp", "amqps", "pyamqp"}
#: ``sql``: the database is the queue (also when unset); ``memory``: one process (the testing kit)
BROKER_SCHEMES = {"sql", "memory", *AMQP_SCHEMES}
SMTP_SCHEMES = {"smtp", "smtps"}


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Read from the environment (``CHUTE_`` prefix) and ``.env``; list settings are comma-separated."""

    model_config = SettingsConfigDict(env_prefix="CHUTE_", env_file=".env", extra="ignore")

    var_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""
    storage_dir: Path | None = None
    handlers: Path = Path("handlers")
    templates: Path = Path("notifications/templates")
    #: where ``.eml`` files go when no SMTP server is configured
    eml_dir: Path | None = None
    smtp_url: str | None = None
    smtp_timeout: float = Field(default=30.0, gt=0)
    #: check the SMTP server's TLS certificate (STARTTLS or smtps://); turn off only for a test server
    #: with a self-signed certificate, and prefer CHUTE_SMTP_CA_FILE even then
    smtp_verify: bool = True
    #: a PEM file of CA certificates to trust for the SMTP server (a private CA, a self-signed server)
    smtp_ca_file: Path | None = None
    mail_from: str = "Chute <chute@localhost>"
    #: tries for one email before it is ``failed``; only answers about that email count (4xx to MAIL,
    #: RCPT or DATA), not an unreachable server, which only delays it
    notify_attempts: int = Field(default=8, ge=1, le=100)
    #: the first wait after a temporary failure, in seconds; it doubles up to ``notify_max_backoff``
    notify_backoff: float = Field(default=30.0, gt=0)
    notify_max_backoff: float = Field(default=3600.0, gt=0)
    #: emails sent over one SMTP connection before the notifier looks at the table again
    notify_batch: int = Field(default=100, ge=1, le=10_000)
    #: how often the notifier looks for due emails when nothing woke it
    notify_poll: float = Field(default=0.5, gt=0)
    #: how long a claim on an email lasts without renewal (a busy notifier renews it every quarter);
    #: the mail a dead notifier held goes out again soon after it
    notify_lease: float = Field(default=30.0, gt=0)
    #: how many addresses one upload may name in ``notify`` (0: uploads may name none); the handler's
    #: ``notify=`` and CHUTE_NOTIFY_DEFAULT are the operator's own and do not count
    notify_max: int = Field(default=10, ge=0, le=1000)
    #: the only recipient domains Chute mails, each with its subdomains (``example.com`` allows
    #: ``eu.example.com``); empty: any domain. Declared before notify_default, which must fit it.
    notify_domains: CommaList = []
    #: emails one recipient gets about one job and event in all, the first included: an operator's
    #: re-runs past it change the job but mail nobody again
    notify_reruns: int = Field(default=3, ge=1, le=100)
    notify_default: CommaList = []
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    #: form fields besides the file one upload may carry (``notify`` repeated counts each time); past it, 413
    max_fields: int = Field(default=64, gt=0, le=10_000)
    #: bytes of all those fields together (a body without Content-Length included); past it, 413
    max_field_bytes: int = Field(default=256 * 1024, gt=0, le=64 * 1024 * 1024)
    #: multipart parts in one upload, the file's included; past it, 413
    max_parts: int = Field(default=128, gt=0, le=10_000)
    #: bytes of one part's headers (a 5,000-character file name fits); past it, 400
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    #: seconds an upload's body may go without sending a byte before it is cut with 408 (slowloris)
    upload_idle_timeout: float = Field(default=30.0, gt=0, le=3600)
    #: seconds one upload's whole body may take (a drip of a byte at a time included); past it, 408
    upload_body_timeout: float = Field(default=1800.0, gt=0, le=86_400)
    #: seconds a request's line and headers may take to arrive, from their first byte (a client that
    #: sends nothing or a byte now and then holds no connection past it)
    request_head_timeout: float = Field(default=10.0, gt=0, le=600)
    api_keys: CommaList = []
    #: a key that opens ``/metrics`` alone (a Prometheus scraper's); API keys open it too. Set, it closes
    #: ``/metrics`` even when CHUTE_API_KEYS is empty
    metrics_key: str | None = Field(default=None, min_length=8, max_length=1024)
    #: let ``chute serve``/``chute api`` listen beyond loopback with no CHUTE_API_KEYS: anyone who can
    #: reach the port may then upload, read every job and download every file
    allow_open: bool = False
    public_url: str = "http://127.0.0.1:8000"
    worker_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0, le=512)
    queue_type: str = "quorum"
    #: queue names start with this: several Chutes (or test runs) can share one RabbitMQ
    queue_prefix: str = Field(default="chute", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lease_seconds: float = Field(default=30.0, gt=0)
    #: how long a stopping worker lets running attempts finish before it hands them back
    shutdown_grace: float = Field(default=30.0, ge=0)
    relay_interval: float = Field(default=0.5, gt=0)
    #: the database source: how often a waiting worker looks for jobs another process made due
    poll_interval: float = Field(default=0.25, gt=0, le=60)
    #: how long the relay leaves a fresh upload to the API's own publish before sending it itself
    publish_grace: float = Field(default=5.0, ge=2.0)
    log_level: str = "INFO"
    #: the address space a handler's process may use, in MiB, unless its ``@handler(memory_mb=…)`` says
    #: otherwise; past it the attempt fails as ``MemoryLimitExceeded`` (0: no limit)
    handler_memory_mb: int = Field(default=1024, ge=0)
    #: finished jobs older than this many days lose their files, artifacts and rows (0: kept forever)
    retention_days: float = Field(default=0, ge=0)
    #: the most JSON a job's result may take when stored; a bigger result fails the attempt
    max_result_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("notify_default", "api_keys", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("notify_default")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        return normalize_all(value)  # a BadAddress is a ValueError: pydantic reports it

    @field_validator("notify_domains", mode="before")
    @classmethod
    def _domains(cls, value: Any) -> Any:
        value = _split(value)
        return [normalize_domain(d) for d in value] if isinstance(value, list) else value

    @field_validator("notify_default")
    @classmethod
    def _defaults_in_domains(cls, value: list[str], info: ValidationInfo) -> list[str]:
        domains = info.data.get("notify_domains") or []
        outside = [address for address in value if not in_domains(address, domains)]
        if outside:
            raise ValueError(f"{outside[0]!r} is outside CHUTE_NOTIFY_DOMAINS ({', '.join(domains)})")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value:
            return value
        example = "say sqlite:///var/chute.db or postgresql+psycopg://user:pass@host/db"
        try:  # never echo the value: it may hold a password
            url = make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError(f"not a SQLAlchemy URL ({example})") from None
        try:
            url.get_dialect()
        except ArgumentError:  # NoSuchModuleError: no such dialect or driver
            raise ValueError(f"no SQLAlchemy dialect or driver {url.drivername!r} ({example})") from None
        return value

    @field_validator("metrics_key", mode="before")
    @classmethod
    def _metrics_key(cls, value: Any) -> Any:
        return (value.strip() or None) if isinstance(value, str) else value  # set but empty: no key

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme == "filesystem":
            raise ValueError("the embedded filesystem broker is gone: leave it unset (the database is the queue)")
        if value and scheme not in BROKER_SCHEMES:
            raise ValueError(f"{value!r}: the scheme must be one of {', '.join(sorted(BROKER_SCHEMES))}")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str | None) -> str | None:
        if value and (urlsplit(value).scheme not in SMTP_SCHEMES or not urlsplit(value).hostname):
            raise ValueError(f"{value!r}: expected smtp://[user:pass@]host[:port] or smtps://…")
        if value:
            from chute.notify.smtp import SmtpConfig

            SmtpConfig.from_url(value)  # its options (starttls=…) are checked here, at start
        return value or None

    @field_validator("mail_from")
    @classmethod
    def _mail_from(cls, value: str) -> str:
        from email.utils import parseaddr

        _, address = parseaddr(value)
        local, at, domain = address.rpartition("@")
        if not (at and local and domain) or any(c.isspace() or ord(c) < 32 for c in value.replace(" ", "x")):
            raise ValueError(f"{value!r} is not an address like 'Chute <chute@example.com>'")
        return value.strip()

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("queue_type")
    @classmethod
    def _queue_type(cls, value: str) -> str:
        if value not in {"quorum", "classic"}:
            raise ValueError("must be 'quorum' or 'classic'")
        return value

    # Derived locations: everything Chute writes by default lives under var/.
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'chute.db'}"

    @property
    def queue(self) -> str:
        """Where jobs wait for a worker: ``sql`` (the jobs table), ``amqp`` (RabbitMQ) or ``memory``."""
        scheme = urlsplit(self.broker_url).scheme or "sql"
        return "amqp" if scheme in AMQP_SCHEMES else scheme

    @property
    def files_dir(self) -> Path:
        return self.storage_dir or self.var_dir / "files"

    @property
    def eml_folder(self) -> Path:
        return self.eml_dir or self.var_dir / "mail"


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning a validation failure into one line that names the CHUTE_ variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "CHUTE_" + str(first["loc"][0]).upper() if first["loc"] else "CHUTE_*"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}: {message}") from None
