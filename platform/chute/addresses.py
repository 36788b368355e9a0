"""Email addresses, checked one way everywhere: uploads' notify, CHUTE_NOTIFY_DEFAULT, @handler(notify=).

Who may be mailed is the operator's call, not the uploader's: ``Recipients`` caps how many addresses
one upload may name (``CHUTE_NOTIFY_MAX``) and, when ``CHUTE_NOTIFY_DOMAINS`` is set, refuses any
address outside those domains. A listed domain allows itself and its subdomains, label by label:
``example.com`` allows ``ann@example.com`` and ``ann@eu.example.com``, never ``ann@badexample.com``.

Checking costs time linear in the input, and bounded per address: an address longer than
``MAX_LENGTH`` (RFC 5321's limit) is refused by its length alone, before any parser or regular
expression sees it, and an error message never quotes more than ``SHOWN`` characters of what it got.
A list is parsed address by address and refused at the first one past the cap (``REPEATS`` times the
cap when it repeats itself), so an upload's list costs at most ``REPEATS · CHUTE_NOTIFY_MAX`` parses of
at most ``MAX_LENGTH`` characters each, plus one pass to split it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

#: the longest address SMTP carries (RFC 5321 4.5.3.1.3: a 256-octet path, less its angle brackets)
MAX_LENGTH = 254
#: how much of a refused input an error message quotes
SHOWN = 60
#: a list may repeat addresses, up to this many times the cap of addresses listed in all
REPEATS = 4


class BadAddress(ValueError):
    """Not an email address, or not one Chute may mail; the message says why."""


class TooManyRecipients(BadAddress):
    """More addresses than ``CHUTE_NOTIFY_MAX`` allows."""


class DomainNotAllowed(BadAddress):
    """An address outside ``CHUTE_NOTIFY_DOMAINS``."""


def shown(text: str) -> str:
    """``text`` quoted for a message, cut to ``SHOWN`` characters."""
    return repr(text) if len(text) <= SHOWN else repr(text[:SHOWN]) + f"… ({len(text)} characters)"


def normalize(address: str) -> str:
    """The address in its normal form (domain lower-cased, Unicode normalised), or BadAddress."""
    text = address.strip()
    if len(text) > MAX_LENGTH:  # structural: email-validator only ever sees a bounded string
        raise BadAddress(f"{shown(text)} is not an email address (longer than {MAX_LENGTH} characters)")
    try:
        return str(validate_email(text, check_deliverability=False).normalized)
    except EmailNotValidError as exc:
        raise BadAddress(f"{shown(text)} is not an email address ({exc})") from None


def normalize_all(addresses: Iterable[str]) -> list[str]:
    """Each address normalised, in order, without repeats."""
    out: list[str] = []
    for address in addresses:
        normal = normalize(address)
        if normal not in out:
            out.append(normal)
    return out


def normalize_domain(domain: str) -> str:
    """A ``CHUTE_NOTIFY_DOMAINS`` entry in the form an address's domain takes once normalised;
    ``@example.com``, ``.example.com`` and ``*.example.com`` all mean ``example.com``."""
    text = domain.strip().lower()
    for prefix in ("@", "*.", "."):
        text = text.removeprefix(prefix)
    if not text or len(text) > MAX_LENGTH:
        raise BadAddress(f"{shown(domain)} is not a domain")
    try:
        return str(validate_email(f"postmaster@{text}", check_deliverability=False).domain)
    except EmailNotValidError as exc:
        raise BadAddress(f"{shown(domain)} is not a domain ({exc})") from None


def in_domains(address: str, domains: Sequence[str]) -> bool:
    """Whether a normalised address is in one of the (normalised) domains or their subdomains; an
    empty list allows every domain."""
    if not domains:
        return True
    domain = address.rpartition("@")[2].lower()
    return any(domain == allowed or domain.endswith("." + allowed) for allowed in domains)


def too_many(limit: int) -> str:
    if limit == 0:
        return "this Chute takes no notify addresses from uploads (CHUTE_NOTIFY_MAX is 0)"
    return f"too many recipients: at most {limit} per upload (CHUTE_NOTIFY_MAX)"


@dataclass(frozen=True)
class Recipients:
    """The operator's rules for who may be mailed: at most ``limit`` addresses in one list (None: no
    cap), each in ``domains`` (empty: any domain)."""

    limit: int | None = None
    domains: tuple[str, ...] = ()

    def allows(self, address: str) -> bool:
        return in_domains(address, self.domains)

    def check(self, addresses: Iterable[str]) -> list[str]:
        """Normalised, in order, without repeats; BadAddress for the first address that is bad, past
        the cap (counted without repeats, and found before the rest are parsed) or outside the domains.

        Repeats are forgiven, but not without end: past ``REPEATS`` times the cap of addresses listed
        (repeats included) the list is refused too, so one upload costs at most that many parses."""
        out: list[str] = []
        seen: set[str] = set()
        listed = 0
        for address in addresses:
            listed += 1
            if self.limit is not None and listed > REPEATS * max(self.limit, 1):
                raise TooManyRecipients(f"{too_many(self.limit)}; {listed} or more listed")
            normal = normalize(address)
            if normal.lower() in seen:
                continue
            if self.limit is not None and len(out) >= self.limit:
                raise TooManyRecipients(too_many(self.limit))
            if not self.allows(normal):
                raise DomainNotAllowed(f"{shown(normal)} is outside the domains this Chute mails "
                                       f"(CHUTE_NOTIFY_DOMAINS: {', '.join(self.domains)})")
            seen.add(normal.lower())
            out.append(normal)
        return out
