"""The message as bytes: what the standard library reads back, and what no user text can change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chute.notify.message import Mail, UnsendableAddress, ascii_address, clean_header_text, compose, message_id_for

FROM = "Chute Notifications <chute@example.com>"
MID = message_id_for("0190abc", "processed", "ann@example.com", 1, FROM)
HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Auto-Submitted", "X-Chute-Job",
           "X-Chute-Event", "Content-Type"}


def build(**overrides: Any) -> Mail:
    values: dict[str, Any] = {
        "mail_from": FROM, "recipient": "ann@example.com", "subject": "[Chute] report.csv is processed",
        "text": "Hello,\nrows: 3\n", "html": "<p>Hello, <b>rows</b>: 3</p>", "message_id": MID,
        "date": datetime(2026, 11, 29, 9, 30, tzinfo=UTC),
        "headers": {"X-Chute-Job": "0190abc", "X-Chute-Event": "processed"},
    }
    values.update(overrides)
    return compose(**values)


def test_the_message_parses_with_the_expected_headers() -> None:
    message = build().parsed()
    assert set(message.keys()) == HEADERS
    assert message["From"] == FROM
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "[Chute] report.csv is processed"
    assert message["Message-ID"] == MID
    assert message["Date"].datetime == datetime(2026, 11, 29, 9, 30, tzinfo=UTC)
    assert message["Auto-Submitted"] == "auto-generated"
    assert not message.defects


def test_it_is_multipart_alternative_with_text_then_html() -> None:
    message = build().parsed()
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().rstrip("\n") == "Hello,\nrows: 3"
    assert parts[1].get_content().rstrip("\n") == "<p>Hello, <b>rows</b>: 3</p>"
    assert all(not p.defects for p in parts)


def test_every_line_is_ascii_crlf_and_short() -> None:
    mail = build(text="ünïcödé " * 40 + "\n" + "x" * 500, html="<p>" + "é" * 300 + "</p>")
    assert mail.data.isascii()
    lines = mail.data.split(b"\r\n")
    assert all(b"\n" not in line and b"\r" not in line for line in lines)
    assert max(len(line) for line in lines) <= 998
    body = mail.parsed().get_body(("plain",))
    assert body is not None and body.get_content().startswith("ünïcödé ünïcödé")  # type: ignore[attr-defined]


@pytest.mark.parametrize("evil", [
    "report\r\nBcc: victim@example.com",
    "report\nBcc: victim@example.com",
    "report\rBcc: victim@example.com",
    "report\u2028Bcc: victim@example.com",
    "report\x85Bcc: victim@example.com",
    "report\x00\x1b[31m\r\n\r\n<html>body</html>",
])
def test_a_line_break_in_the_subject_adds_no_header(evil: str) -> None:
    message = build(subject=f"[Chute] {evil}.csv is processed").parsed()
    assert set(message.keys()) == HEADERS
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    assert message["Subject"].startswith("[Chute] report")
    assert message.get_content_type() == "multipart/alternative"


def test_text_in_the_body_cannot_end_the_part_or_forge_a_boundary() -> None:
    mail = build()
    boundary = mail.parsed().get_boundary()
    assert boundary is not None
    forged = build(text=f"\n--{boundary}\nContent-Type: text/html\n\n<script>x</script>\n--{boundary}--\n")
    parts = list(forged.parsed().iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert f"--{boundary}" in parts[0].get_content()


def test_a_non_ascii_subject_is_encoded_and_reads_back() -> None:
    subject = "[Chute] résumé-日本語-" + "ü" * 80 + ".pdf is processed"
    message = build(subject=subject).parsed()
    assert message["Subject"] == subject


def test_a_long_subject_is_cut_to_one_readable_line() -> None:
    message = build(subject="[Chute] " + "word " * 100).parsed()
    assert len(message["Subject"]) <= 200
    assert message["Subject"].endswith("…")


def test_the_message_id_is_stable_for_a_job_event_recipient_and_run() -> None:
    again = message_id_for("0190abc", "processed", "ann@example.com", 1, FROM)
    others = {message_id_for("0190abc", "failed", "ann@example.com", 1, FROM),
              message_id_for("0190abc", "processed", "bob@example.com", 1, FROM),
              message_id_for("0190abc", "processed", "ann@example.com", 2, FROM),
              message_id_for("0190abd", "processed", "ann@example.com", 1, FROM)}
    assert again == MID
    assert MID not in others and len(others) == 4
    assert MID.startswith("<chute.0190abc.processed.") and MID.endswith("@example.com>")


def test_the_same_message_is_the_same_bytes_every_time() -> None:
    assert build().data == build().data


def test_an_international_domain_is_idna_encoded() -> None:
    assert ascii_address("ann@bücher.example") == "ann@xn--bcher-kva.example"
    assert build(recipient="ann@bücher.example").recipient == "ann@xn--bcher-kva.example"


@pytest.mark.parametrize("address", ["jörg@example.com", "ann@example.com\r\nBcc: x@example.com", "not an address"])
def test_an_address_that_cannot_go_on_the_wire_is_refused(address: str) -> None:
    with pytest.raises(UnsendableAddress):
        build(recipient=address)


def test_clean_header_text_keeps_printable_text_on_one_line() -> None:
    assert clean_header_text("a\tb\r\n\r\nc\u202ed") == "a b c d"
