"""Email addresses, checked one way everywhere: uploads' notify, CHUTE_NOTIFY_DEFAULT, @handler(notify=)."""

from __future__ import annotations

from collections.abc import Iterable

from email_validator import EmailNotValidError, validate_email


class BadAddress(ValueError):
    """Not an email address; the message says why."""


def normalize(address: str) -> str:
    """The address in its normal form (domain lower-cased, Unicode normalised), or BadAddress."""
    try:
        return str(validate_email(address.strip(), check_deliverability=False).normalized)
    except EmailNotValidError as exc:
        raise BadAddress(f"{address!r} is not an email address ({exc})") from None


def normalize_all(addresses: Iterable[str]) -> list[str]:
    """Each address normalised, in order, without repeats."""
    out: list[str] = []
    for address in addresses:
        normal = normalize(address)
        if normal not in out:
            out.append(normal)
    return out
