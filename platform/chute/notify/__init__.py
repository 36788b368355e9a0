"""Notifications: an email to the people who asked when a job is ``processed`` or has finally
``failed``; never lost, never sent twice.

- ``deliveries``: the rows (one per email) and the job-store hook that makes them with the outcome
- ``notifier``: the loop, in its own thread, that sends them
- ``smtp``: aiosmtplib, and what each failure means; ``local``: ``.eml`` files and the testing kit's list
- ``templates`` + ``message``: Jinja2 in, RFC 5322 bytes out
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from chute.errors import ConfigError
from chute.notify.deliveries import DeliveryHook, DeliveryStore
from chute.notify.local import EmlTransport, ListTransport
from chute.notify.notifier import Notifier, Tally
from chute.notify.smtp import SmtpConfig, SmtpTransport, Transport
from chute.notify.templates import Templates
from chute.settings import Settings

log = logging.getLogger("chute.notify")
#: the templates beside the source tree (a checkout or an editable install)
SOURCE_TEMPLATES = Path(__file__).resolve().parents[3] / "notifications" / "templates"

__all__ = [  # noqa: RUF022 - grouped by use
    # Running
    "Notifier",
    "Tally",
    "templates_for",
    "transport_for",
    # Rows
    "DeliveryHook",
    "DeliveryStore",
    # Transports
    "Transport",
    "SmtpConfig",
    "SmtpTransport",
    "EmlTransport",
    "ListTransport",
    "Templates",
]


def templates_for(settings: Settings) -> Templates:
    """``CHUTE_TEMPLATES`` when it was set; otherwise ``notifications/templates`` under the current
    directory, else the one beside Chute's source (so ``chute serve`` works from any directory)."""
    if "templates" in settings.model_fields_set or settings.templates.is_dir():
        return Templates(settings.templates)
    if SOURCE_TEMPLATES.is_dir():
        return Templates(SOURCE_TEMPLATES)
    return Templates(settings.templates)


def check_templates(templates: Templates, settings: Settings) -> None:
    """At start: a wrong CHUTE_TEMPLATES stops Chute; missing defaults only warn (mail waits for them)."""
    try:
        templates.check()
    except ConfigError:
        if "templates" in settings.model_fields_set:
            raise
        log.warning("no email templates at %s (set CHUTE_TEMPLATES): notifications wait, pending, until "
                    "they are there", templates.root)


def transport_for(settings: Settings) -> tuple[Callable[[], Transport], str]:
    """SMTP when ``CHUTE_SMTP_URL`` is set, else ``.eml`` files in the .eml folder; and a description."""
    if settings.smtp_url:
        config = SmtpConfig.from_url(settings.smtp_url, timeout=settings.smtp_timeout, verify=settings.smtp_verify,
                                     ca_file=settings.smtp_ca_file)
        if config.clear_text_login:
            log.warning("CHUTE_SMTP_URL says starttls=false with a login: the password goes to %s:%d in clear "
                        "text", config.host, config.port)
        return (lambda: SmtpTransport(config)), config.safe_url
    folder = settings.eml_folder
    return (lambda: EmlTransport(folder)), f"the .eml folder {folder} (no CHUTE_SMTP_URL)"
