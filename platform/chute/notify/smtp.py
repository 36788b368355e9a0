"""Talking to the mail server: ``CHUTE_SMTP_URL`` parsed, one aiosmtplib connection per batch, and
every failure sorted into what it means for the email.

The sorting is the heart of "never lost, never doubled":

============================================  ===========  ==============================================
what happened                                 outcome      why
============================================  ===========  ==============================================
connect, TLS, EHLO or login fails             (no row)     the server is unreachable: every email waits,
                                                           none is charged an attempt
4xx to MAIL FROM or RCPT TO                   retry        "try later", about this message
5xx to MAIL FROM or RCPT TO                   failed       "never" (an unknown mailbox, a refused sender)
timeout / disconnect before DATA              retry        no DATA command was sent: the server cannot
                                                           have the mail
4xx / 5xx to DATA or to the message data      retry/failed the server answered: it does not have the mail
timeout / disconnect after DATA was sent      uncertain    the server may have accepted it and the answer
                                                           was lost: resending could deliver it twice
============================================  ===========  ==============================================

"After DATA" starts when the DATA command is written, not when the message text is: aiosmtplib sends
both in one call, and a timeout waiting for the 354 cannot be told apart from one waiting for the final
250. Counting that one round trip as uncertain too errs on the side of a visible, re-queueable
``uncertain`` row rather than a duplicate in somebody's inbox.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
from aiosmtplib import (
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from chute.notify.message import Mail

log = logging.getLogger("chute.notify")
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class SendError(Exception):
    """One message was not sent; ``outcome`` says what to do about it: retry, failed or uncertain."""

    def __init__(self, outcome: str, message: str, *, connection_lost: bool = False) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.connection_lost = connection_lost


class ConnectFailed(Exception):
    """The server could not be reached, or refused the session (TLS, EHLO, login): no message is at fault."""


class Transport(Protocol):
    """One connection's worth of sending; ``async with`` opens and closes it.

    ``mail_from`` and ``rcpt_to`` come before DATA; ``content`` is DATA and the message: the notifier
    commits "DATA started" before it calls ``content``."""

    @property
    def alive(self) -> bool: ...

    async def __aenter__(self) -> Transport: ...

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    async def mail_from(self, mail: Mail) -> None: ...

    async def rcpt_to(self, mail: Mail) -> None: ...

    async def content(self, mail: Mail) -> str: ...


@dataclass(frozen=True)
class SmtpConfig:
    """``smtp://user:pass@host:587?starttls=true`` or ``smtps://host:465``.

    ``starttls``: ``true`` requires the upgrade, ``false`` never tries it; left out, it is used when
    the server offers it, and required when the URL has a login: credentials never go out in clear
    text unless the URL says ``?starttls=false`` itself (a server that offers no STARTTLS is then a
    ConnectFailed that says so, and the mail waits). ``smtps://`` is TLS from the first byte. The
    password is never logged."""

    host: str
    port: int
    use_tls: bool
    start_tls: bool | None
    username: str | None
    password: str | None
    timeout: float = 30.0
    verify: bool = True
    ca_file: Path | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0, verify: bool = True,
                 ca_file: Path | None = None) -> SmtpConfig:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("expected smtp://[user:pass@]host[:port][?starttls=true|false] or smtps://host[:port]")
        options = {k.lower(): v[-1].lower() for k, v in parse_qs(parts.query).items()}
        unknown = set(options) - {"starttls"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (the one option is starttls=true|false)")
        start_tls: bool | None = None
        if "starttls" in options:
            if options["starttls"] not in TRUE | FALSE:
                raise ValueError("starttls must be true or false")
            start_tls = options["starttls"] in TRUE
        use_tls = parts.scheme == "smtps"
        if use_tls and start_tls:
            raise ValueError("smtps:// is TLS already; starttls=true is for smtp://")
        try:
            port = parts.port or (465 if use_tls else 587 if start_tls else 25)
        except ValueError:
            raise ValueError("the port is not a number from 1 to 65535") from None
        if parts.username and not use_tls and start_tls is None:
            start_tls = True  # a login is never sent in clear text unless the URL asks for it
        return cls(parts.hostname, port, use_tls, False if use_tls else start_tls,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None,
                   timeout, verify, ca_file)

    @property
    def clear_text_login(self) -> bool:
        """A login over a connection that is never encrypted: only when the URL said starttls=false."""
        return self.username is not None and not self.use_tls and self.start_tls is False

    @property
    def safe_url(self) -> str:
        user = f"{self.username}:***@" if self.username else ""
        tls = ""
        if not self.use_tls and self.start_tls is not None:
            tls = f"?starttls={str(self.start_tls).lower()}"
        return f"{'smtps' if self.use_tls else 'smtp'}://{user}{self.host}:{self.port}{tls}"

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def classify_envelope(exc: BaseException) -> SendError:
    """A failure of MAIL FROM or RCPT TO: nothing was handed over, so nothing can be doubled."""
    if isinstance(exc, SMTPResponseException):
        lost = exc.code == 421  # "closing the channel"
        return SendError("retry" if 400 <= exc.code < 500 else "failed", _describe(exc), connection_lost=lost)
    if isinstance(exc, ValueError):  # aiosmtplib refuses an address it cannot send safely
        return SendError("failed", f"{type(exc).__name__}: {exc}")
    return SendError("retry", _describe(exc), connection_lost=True)


def classify_data(exc: BaseException) -> SendError:
    """A failure once DATA was sent: an answer is definite; silence is uncertain."""
    if isinstance(exc, SMTPResponseException):
        lost = exc.code == 421
        return SendError("retry" if 400 <= exc.code < 500 else "failed", _describe(exc), connection_lost=lost)
    return SendError("uncertain", f"{_describe(exc)} after the message data was sent; the server may have "
                                  "accepted it, so it is not sent again on its own", connection_lost=True)


def _connect_problem(config: SmtpConfig, exc: BaseException) -> str:
    if config.start_tls and type(exc) is SMTPException and "STARTTLS" in str(exc).upper():
        why = ("the URL has a login, and Chute never sends one in clear text" if config.username
               else "the URL asks for starttls=true")
        return (f"the server does not offer STARTTLS, and {why}; nothing was sent (make the server offer "
                "STARTTLS, use smtps://, or say ?starttls=false in CHUTE_SMTP_URL to allow clear text)")
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SMTPResponseException):
        what = {SMTPSenderRefused: "MAIL FROM", SMTPRecipientRefused: "RCPT TO", SMTPDataError: "DATA"}
        stage = next((name for kind, name in what.items() if isinstance(exc, kind)), "the server")
        return f"{stage} answered {exc.code} {exc.message}".strip()
    if isinstance(exc, SMTPTimeoutError | TimeoutError):
        return f"timed out ({type(exc).__name__}: {exc})"
    if isinstance(exc, SMTPServerDisconnected | ConnectionError):
        return f"the connection was lost ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


class SmtpTransport:
    """One aiosmtplib connection, reused for every message of a batch."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._smtp: aiosmtplib.SMTP | None = None
        self._dirty = False  # an envelope was started and not finished: RSET before the next one

    @property
    def alive(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def __aenter__(self) -> SmtpTransport:
        c = self.config
        smtp = aiosmtplib.SMTP(hostname=c.host, port=c.port, timeout=c.timeout, use_tls=c.use_tls,
                               start_tls=c.start_tls, tls_context=c.tls_context() if (c.use_tls or c.start_tls
                                                                                      is not False) else None,
                               username=c.username, password=c.password)
        try:
            await smtp.connect()
        except (SMTPException, OSError, ssl.SSLError) as exc:
            smtp.close()
            raise ConnectFailed(f"{c.safe_url}: {_connect_problem(c, exc)}") from exc
        except BaseException:  # cancelled (the notifier is stopping): close the socket all the same
            smtp.close()
            raise
        self._smtp = smtp
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        if smtp.is_connected and kind is None:
            with contextlib.suppress(SMTPException, OSError):
                await smtp.quit(timeout=min(5.0, self.config.timeout))
        smtp.close()

    async def mail_from(self, mail: Mail) -> None:
        smtp = self._connected()
        try:
            if self._dirty:  # the previous message stopped half-way: start a clean transaction
                await smtp.rset()
                self._dirty = False
            self._dirty = True
            await smtp.mail(mail.sender)
        except (SMTPException, OSError, ValueError) as exc:
            raise classify_envelope(exc) from exc

    async def rcpt_to(self, mail: Mail) -> None:
        smtp = self._connected()
        try:
            await smtp.rcpt(mail.recipient)
        except (SMTPException, OSError, ValueError) as exc:
            raise classify_envelope(exc) from exc

    async def content(self, mail: Mail) -> str:
        smtp = self._connected()
        try:
            response = await smtp.data(mail.data)
        except (SMTPException, OSError) as exc:
            raise classify_data(exc) from exc
        self._dirty = False
        return f"{response.code} {response.message}"

    def _connected(self) -> aiosmtplib.SMTP:
        if self._smtp is None or not self._smtp.is_connected:
            raise SendError("retry", "not connected", connection_lost=True)
        return self._smtp
