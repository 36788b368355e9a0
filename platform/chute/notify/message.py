"""One email as bytes: headers, then multipart/alternative with a text and an HTML part.

Why not build an ``email.message.EmailMessage`` and flatten it? It costs about 0.8 ms a message on the
machine this was measured on (header parsing through the header registry, then the generator's
folding), more than an SMTP exchange over loopback, and it would make the notifier CPU-bound. The
structure Chute sends is fixed and small, so it is written here directly (about 10 µs), and every test
reads the result back with the standard library's strict parser (``Mail.parsed``): the stdlib is the
judge of the output even though it does not produce it.

How nothing a user controls can add a header:
- the only user text in a header is the subject (it shows the file name): control characters, CR, LF
  and the Unicode line separators become spaces, runs of spaces collapse, and it is cut to 200
  characters; non-ASCII text is RFC 2047-encoded, long lines folded, by ``email.header.Header``;
- the recipient was validated as an address when the upload came in, and is checked again here;
- the bodies are quoted-printable: every line is ASCII, at most 76 characters, and ``=`` is written
  ``=3D``, so no body line can ever read ``--=_…``, the multipart boundary.

The Message-ID is derived from (job, event, recipient, run) once, when the delivery row is made, and
kept on the row: a resend (an operator re-queueing an uncertain one) carries the same ID, so a mailbox
that got both can tell they are one message.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr

SUBJECT_MAX = 200
_SPACES = re.compile(r"\s+")
_NOT_IN_ADDRESS = re.compile(r'[\s\x00-\x1f\x7f<>()\[\],;:"\\]')
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[A-Za-z0-9.-]+>")
#: line breaks that are not control characters but that some clients still break on
_BREAKS = {"\u0085", "\u2028", "\u2029"}


class UnsendableAddress(ValueError):
    """An address Chute cannot put on the wire (a non-ASCII local part needs SMTPUTF8)."""


@dataclass(frozen=True)
class Mail:
    """What goes to the server: the envelope and the message, as bytes with CRLF line ends."""

    message_id: str
    sender: str
    recipient: str
    subject: str
    data: bytes

    def parsed(self) -> EmailMessage:
        """The message as the standard library reads it (what tests and the testing kit look at), with
        Python's own ``\n`` line ends, so ``get_content()`` gives text as the template wrote it."""
        message: EmailMessage = email.message_from_bytes(self.data.replace(b"\r\n", b"\n"),
                                                          policy=email.policy.default)
        return message


def clean_header_text(text: str, limit: int = SUBJECT_MAX) -> str:
    """One line of printable text: what may go into a header whatever a user typed."""
    if not (text.isascii() and text.isprintable()):
        text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch in _BREAKS else ch
                       for ch in text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def ascii_address(address: str) -> str:
    """``user@bücher.example`` → ``user@xn--bcher-kva.example``; a non-ASCII local part is refused.

    The addresses were validated when they came in; this only makes sure nothing that could change the
    meaning of a header or an SMTP command (spaces, brackets, quotes, control characters) got through."""
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or _NOT_IN_ADDRESS.search(address):
        raise UnsendableAddress(f"{address!r} is not a plain email address")
    if not local.isascii():
        raise UnsendableAddress(f"{address!r} has a non-ASCII local part, which needs SMTPUTF8; Chute does "
                                "not send those")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise UnsendableAddress(f"{address!r}: the domain cannot be IDNA-encoded ({exc})") from None
    return f"{local}@{domain}"


@functools.lru_cache(maxsize=16)
def split_from(mail_from: str) -> tuple[str, str]:
    """``"Chute <chute@example.com>"`` → (the From header value, the envelope sender)."""
    name, address = parseaddr(mail_from)
    address = ascii_address(address)
    name = clean_header_text(name, 100)
    return (formataddr((name, address), charset="utf-8") if name else address), address


def message_id_for(job_id: str, event: str, recipient: str, run: int, mail_from: str) -> str:
    """Stable for a (job, event, recipient, run): the same on every retry, never the same for two."""
    _, sender = split_from(mail_from)
    domain = sender.rpartition("@")[2] or "chute.invalid"
    digest = hashlib.sha256(f"{job_id}\0{event}\0{recipient.lower()}\0{run}".encode()).hexdigest()[:20]
    return f"<chute.{clean_id(job_id)}.{clean_id(event)}.{digest}@{domain}>"


def clean_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "", text)[:64] or "x"


def encode_subject(subject: str) -> str:
    """RFC 2047 when not ASCII; folded at 78 characters either way (``Header`` does both)."""
    if subject.isascii() and len(subject) <= 60:
        return subject
    charset = "us-ascii" if subject.isascii() else "utf-8"
    return Header(subject, charset, header_name="Subject").encode(linesep="\r\n")


def quoted_printable(text: str) -> bytes:
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    return binascii.b2a_qp(body.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def compose(*, mail_from: str, recipient: str, subject: str, text: str, html: str, message_id: str,
            date: datetime, headers: dict[str, str] | None = None) -> Mail:
    """The message, ready for DATA: one recipient per message (nobody sees who else was told)."""
    from_header, sender = split_from(mail_from)
    to = ascii_address(recipient)
    subject = clean_header_text(subject)
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"{message_id!r} is not a Message-ID")
    boundary = "=_chute_" + hashlib.sha256(message_id.encode()).hexdigest()[:24]
    lines = [
        f"From: {from_header}",
        f"To: {to}",
        f"Subject: {encode_subject(subject)}",
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        "Auto-Submitted: auto-generated",  # RFC 3834: out-of-office robots do not answer it
    ]
    for name, value in (headers or {}).items():
        if not re.fullmatch(r"X-[A-Za-z0-9-]{1,60}", name):
            raise ValueError(f"{name!r}: only X- headers can be added")
        lines.append(f"{name}: {clean_header_text(value, 200).encode('ascii', 'replace').decode()}")
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    parts = [head]
    for subtype, body in (("plain", text), ("html", html)):
        parts.append(f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'
                     f"Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii"))
        parts.append(quoted_printable(body))
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return Mail(message_id, sender, to, subject, b"".join(parts))
