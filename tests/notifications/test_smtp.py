"""CHUTE_SMTP_URL, and what each SMTP failure means for the email: retry, failed or uncertain."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiosmtplib import (
    SMTPDataError,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

from chute.errors import ConfigError
from chute.notify.smtp import SmtpConfig, classify_data, classify_envelope
from chute.settings import load_settings


@pytest.mark.parametrize(("url", "expected"), [
    ("smtp://localhost:1025", ("localhost", 1025, False, None, None, None)),
    ("smtp://mail.example.com", ("mail.example.com", 25, False, None, None, None)),
    ("smtp://user:p%40ss@mail.example.com:587?starttls=true", ("mail.example.com", 587, False, True, "user", "p@ss")),
    ("smtp://mail.example.com?starttls=true", ("mail.example.com", 587, False, True, None, None)),
    ("smtp://mail.example.com:25?starttls=false", ("mail.example.com", 25, False, False, None, None)),
    ("smtps://mail.example.com", ("mail.example.com", 465, True, False, None, None)),
    ("smtps://me:secret@mail.example.com:2465", ("mail.example.com", 2465, True, False, "me", "secret")),
])
def test_the_url_says_host_port_tls_and_login(url: str, expected: tuple[object, ...]) -> None:
    c = SmtpConfig.from_url(url)
    assert (c.host, c.port, c.use_tls, c.start_tls, c.username, c.password) == expected


def test_the_password_never_shows_in_the_description() -> None:
    config = SmtpConfig.from_url("smtp://user:hunter2@mail.example.com:587?starttls=true")
    assert "hunter2" not in config.safe_url
    assert config.safe_url == "smtp://user:***@mail.example.com:587?starttls=true"


@pytest.mark.parametrize("url", [
    "smtp://mail.example.com?starttls=maybe",
    "smtp://mail.example.com?tls=yes",
    "smtps://mail.example.com?starttls=true",
    "smtp://mail.example.com:99999",
])
def test_a_bad_url_stops_chute_at_start_naming_the_setting(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("CHUTE_SMTP_URL", url)
    with pytest.raises(ConfigError, match="CHUTE_SMTP_URL"):
        load_settings()


def test_verification_can_use_a_ca_file_or_be_turned_off(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    strict = SmtpConfig.from_url("smtps://mail.example.com", ca_file=tls_files["ca_file"]).tls_context()
    loose = SmtpConfig.from_url("smtps://mail.example.com", verify=False).tls_context()
    assert strict.check_hostname and strict.verify_mode.name == "CERT_REQUIRED"
    assert not loose.check_hostname and loose.verify_mode.name == "CERT_NONE"


@pytest.mark.parametrize(("error", "outcome"), [
    (SMTPSenderRefused(451, "try later", "chute@example.com"), "retry"),
    (SMTPRecipientRefused(452, "mailbox full", "ann@example.com"), "retry"),
    (SMTPRecipientRefused(550, "no such user", "ann@example.com"), "failed"),
    (SMTPSenderRefused(553, "sender refused", "chute@example.com"), "failed"),
    (SMTPServerDisconnected("gone"), "retry"),
    (SMTPReadTimeoutError("slow"), "retry"),
    (ConnectionResetError("reset"), "retry"),
    (ValueError("Command arg contains a prohibited control character"), "failed"),
])
def test_before_data_nothing_is_uncertain(error: Exception, outcome: str) -> None:
    assert classify_envelope(error).outcome == outcome


@pytest.mark.parametrize(("error", "outcome"), [
    (SMTPDataError(451, "local error"), "retry"),
    (SMTPDataError(554, "message refused"), "failed"),
    (SMTPReadTimeoutError("no answer"), "uncertain"),
    (SMTPServerDisconnected("gone"), "uncertain"),
    (ConnectionResetError("reset"), "uncertain"),
])
def test_after_data_an_answer_is_definite_and_silence_is_uncertain(error: Exception, outcome: str) -> None:
    assert classify_data(error).outcome == outcome


def test_a_421_closes_the_connection_but_is_only_a_retry() -> None:
    result = classify_envelope(SMTPRecipientRefused(421, "closing", "ann@example.com"))
    assert result.outcome == "retry" and result.connection_lost


def test_a_lost_connection_is_flagged_so_the_batch_reconnects() -> None:
    assert classify_envelope(SMTPServerDisconnected("gone")).connection_lost
    assert classify_data(SMTPReadTimeoutError("no answer")).connection_lost
    assert not classify_envelope(SMTPRecipientRefused(550, "no", "x@example.com")).connection_lost


@pytest.mark.parametrize("value", ["not an address", "Chute <chute@example.com>\r\nBcc: x@example.com", "<@>"])
def test_a_bad_sender_address_stops_chute_at_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CHUTE_MAIL_FROM", value)
    with pytest.raises(ConfigError, match="CHUTE_MAIL_FROM"):
        load_settings()
