"""Transports that need no mail server: ``.eml`` files in an .eml folder (no ``CHUTE_SMTP_URL``), and a
list in memory (the testing kit's ``chute_app.outbox``). Both go through the same notifier, rows and
states as SMTP does, so what a test or a laptop sees is what production does."""

from __future__ import annotations

import logging
import os
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType

from chute.notify.message import Mail, clean_id

log = logging.getLogger("chute.notify")


def eml_name(mail: Mail) -> str:
    """Named after the Message-ID: writing the same message again replaces its file, never adds one."""
    local = mail.message_id.strip("<>").rpartition("@")[0]
    return clean_id(local.replace(".", "-")) + ".eml"


class _Local:
    """What a transport without a server does for the SMTP steps before the content: nothing."""

    @property
    def alive(self) -> bool:
        return True

    async def __aenter__(self) -> _Local:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def mail_from(self, mail: Mail) -> None:
        return None

    async def rcpt_to(self, mail: Mail) -> None:
        return None

    async def content(self, mail: Mail) -> str:
        raise NotImplementedError


class EmlTransport(_Local):
    """Writes each message to ``<folder>/<message>.eml`` (written whole, then renamed into place)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.written: list[Path] = []

    async def __aenter__(self) -> EmlTransport:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    async def content(self, mail: Mail) -> str:
        path = self.folder / eml_name(mail)
        partial = path.with_suffix(".eml.part")
        with partial.open("wb") as f:
            f.write(mail.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        self.written.append(path)
        log.info("mail to=%s subject=%r written to %s (no CHUTE_SMTP_URL: the .eml folder stands in for "
                 "a mail server)", mail.recipient, mail.subject, path)
        return f"written to {path}"


class ListTransport(_Local):
    """Appends each message, parsed, to a list: ``chute_app.outbox``."""

    def __init__(self, outbox: list[EmailMessage]) -> None:
        self.outbox = outbox

    async def content(self, mail: Mail) -> str:
        self.outbox.append(mail.parsed())
        return "appended to the outbox list"
