"""Emails through a real SMTP server (aiosmtpd on a loopback port): one per recipient, exactly once,
whatever the server does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from chute.models import Delivery, DeliveryStatus, Job, utcnow
from chute.notify.deliveries import DELIVERIES, Recorder
from chute.testing import ChuteApp

S = DeliveryStatus
EXPECTED_HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Auto-Submitted",
                    "X-Chute-Job", "X-Chute-Event", "Content-Type"}


def deliveries(app: ChuteApp) -> list[Delivery]:
    with app.runtime.db.read() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def body(message: Any, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    text: str = part.get_content()
    return text


def test_a_processed_job_sends_exactly_one_mail_to_each_recipient(make_app: Callable[..., ChuteApp],
                                                                   smtp_sink: Any) -> None:
    app = make_app(smtp_url=smtp_sink.url, notify_default=["ops@example.com"])
    job = app.upload(b"hello there\n", "hello.txt", notify="ann@example.com")
    app.drain()
    app.drain()  # a second pass finds nothing more to send

    assert sorted(r for m in smtp_sink.received for r in m.recipients) == [
        "ann@example.com", "ops@example.com", "team@example.com"]
    rows = {r.recipient: r for r in deliveries(app)}
    for received in smtp_sink.received:
        (address,) = received.recipients
        message = received.message
        assert received.sender == "chute@example.com"
        assert set(message.keys()) == EXPECTED_HEADERS
        assert message["To"] == address
        assert message["From"] == "Chute <chute@example.com>"
        assert message["Subject"] == "[Chute] hello.txt is processed"
        assert message["Message-ID"] == rows[address].message_id
        assert message.get_content_type() == "multipart/alternative"
        text, html = body(message, "plain"), body(message, "html")
        for part in (text, html):
            for shown in ("hello.txt", "text/plain", "12 bytes", job["sha256"], "shout", "processed",
                          "1 of 3", f"https://chute.example.com/jobs/{job['id']}"):
                assert shown in part, (shown, part)
        assert '"characters": 12' in text and "HELLO THERE" in text
        assert "&#34;characters&#34;: 12" in html
    assert {(r.status, r.attempts) for r in rows.values()} == {(S.SENT, 1)}
    assert all(r.sent_at is not None for r in rows.values())
    assert app.outbox == []  # the mail went over SMTP, not into the testing kit's list


def test_a_failed_job_sends_one_mail_after_its_last_attempt_and_none_before(
        make_app: Callable[..., ChuteApp], smtp_sink: Any, attempt: Callable[..., str]) -> None:
    app = make_app(smtp_url=smtp_sink.url)
    job = app.upload(b"a,b\n1,2\n", "sums.csv", notify="ann@example.com")
    for _ in range(2):
        assert attempt(app, job["id"], ok=False) == "retrying"
        app.deliver()
        assert smtp_sink.received == []
    assert attempt(app, job["id"], ok=False) == "failed"
    app.deliver()
    app.deliver()
    (received,) = smtp_sink.received
    message = received.message
    assert message["Subject"] == "[Chute] sums.csv failed after 3 attempts"
    text, html = body(message, "plain"), body(message, "html")
    assert "ValueError: attempt 3 failed" in text
    assert "<strong>ValueError</strong>: attempt 3 failed" in html
    assert "3 of 3" in text and "failed" in html


def test_a_handler_that_keeps_failing_ends_in_one_failure_mail(make_app: Callable[..., ChuteApp],
                                                                smtp_sink: Any) -> None:
    app = make_app(smtp_url=smtp_sink.url)
    job = app.upload(b"a,b\n1,2\n", "sums.csv", notify="ann@example.com")
    assert app.drain() == 3
    assert app.job(job["id"])["status"] == "failed"
    (received,) = smtp_sink.received
    assert "the numbers do not add up" in body(received.message, "plain")


def test_a_file_name_with_a_script_tag_is_escaped_in_the_html_part(make_app: Callable[..., ChuteApp],
                                                                    smtp_sink: Any) -> None:
    app = make_app(smtp_url=smtp_sink.url)
    job = app.upload(b"hi\n", "<script>alert('hi')<script>.txt", notify="ann@example.com")
    assert job["filename"] == "<script>alert('hi')<script>.txt"
    app.drain()
    message = smtp_sink.to("ann@example.com")[0].message
    html = body(message, "html")
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#39;hi&#39;)&lt;script&gt;.txt" in html
    assert "<script>alert('hi')<script>.txt" in body(message, "plain")


def test_a_file_name_with_cr_lf_adds_no_header(make_app: Callable[..., ChuteApp], smtp_sink: Any,
                                               attempt: Callable[..., str]) -> None:
    """The API cleans names already; a row written some other way must still not reach a header."""
    app = make_app(smtp_url=smtp_sink.url)
    job = app.upload(b"hi\n", "report.txt", notify="ann@example.com")
    with app.runtime.db.write() as session:
        session.execute(update(Job).where(Job.id == job["id"])
                        .values(filename="report\r\nBcc: victim@example.com\r\n\r\n<b>x</b>.txt"))
    attempt(app, job["id"])
    app.deliver()
    (received,) = smtp_sink.to("ann@example.com")
    assert [r for m in smtp_sink.received for r in m.recipients] == ["ann@example.com", "team@example.com"]
    message = received.message
    assert set(message.keys()) == EXPECTED_HEADERS
    assert message["Bcc"] is None
    assert message["Subject"] == "[Chute] report Bcc: victim@example.com <b>x</b>.txt is processed"


def test_mail_waits_while_the_server_is_down_then_goes_out_exactly_once(
        make_app: Callable[..., ChuteApp], smtp_sink: Any, wait: Callable[..., Any]) -> None:
    app = make_app(smtp_url=smtp_sink.url)
    smtp_sink.stop()
    app.notifier.start()
    jobs = [app.upload(f"file {i}\n".encode(), f"f{i}.txt", notify="ann@example.com")["id"] for i in range(5)]
    app.drain()  # the jobs run; the notifier, in its own thread, cannot reach the server
    assert {app.job(j)["status"] for j in jobs} == {"processed"}
    wait(lambda: all(r.status is S.PENDING and "unreachable" in (r.last_error or "") for r in deliveries(app))
         and len(deliveries(app)) == 10, 10, message="every email to wait, pending, with the reason")

    smtp_sink.start()
    wait(lambda: {r.status for r in deliveries(app)} == {S.SENT}, 15, message="every email to be sent")
    got = [(m.recipients[0], m.message["X-Chute-Job"]) for m in smtp_sink.received]
    assert sorted(got) == sorted((who, j) for j in jobs for who in ("ann@example.com", "team@example.com"))
    assert len({m.message["Message-ID"] for m in smtp_sink.received}) == 10


def test_a_temporary_refusal_is_retried_and_then_sent_once(make_app: Callable[..., ChuteApp],
                                                            smtp_sink: Any) -> None:
    app = make_app(smtp_url=smtp_sink.url, notify_backoff=60.0)
    app.upload(b"hi\n", "hi.txt", notify="ann@example.com")
    smtp_sink.rcpt_reply = "451 4.3.0 mailbox busy, try later"
    app.drain()
    assert smtp_sink.received == []
    rows = deliveries(app)
    assert {(r.status, r.attempts) for r in rows} == {(S.PENDING, 1)}
    assert all("451" in (r.last_error or "") and r.next_attempt_at and r.next_attempt_at > utcnow() for r in rows)
    assert asyncio.run(app.notifier.run_once()).claimed == 0  # not due yet: backoff is honoured

    smtp_sink.rcpt_reply = None
    app.deliver()
    assert sorted(r for m in smtp_sink.received for r in m.recipients) == ["ann@example.com", "team@example.com"]
    assert {(r.status, r.attempts) for r in deliveries(app)} == {(S.SENT, 2)}


def test_a_permanent_refusal_fails_the_email_and_is_not_retried(make_app: Callable[..., ChuteApp],
                                                                 smtp_sink: Any) -> None:
    app = make_app(smtp_url=smtp_sink.url)
    app.upload(b"hi\n", "hi.txt", notify="ann@example.com")
    smtp_sink.rcpt_reply = "550 5.1.1 no such user"
    app.drain()
    smtp_sink.rcpt_reply = None
    app.deliver()
    assert smtp_sink.received == []
    assert {(r.status, r.attempts) for r in deliveries(app)} == {(S.FAILED, 1)}
    assert all("550" in (r.last_error or "") for r in deliveries(app))


def test_no_answer_after_the_data_is_uncertain_and_not_resent(make_app: Callable[..., ChuteApp],
                                                               smtp_sink: Any) -> None:
    app = make_app(smtp_url=smtp_sink.url, smtp_timeout=0.5)
    job = app.upload(b"hi\n", "hi.txt")  # the handler's own list: one recipient
    smtp_sink.stall_data = 2.0
    app.drain()
    smtp_sink.stall_data = 0.0
    app.deliver()
    (row,) = deliveries(app)
    assert row.status is S.UNCERTAIN and "may have accepted it" in (row.last_error or "")
    assert [m.message["X-Chute-Job"] for m in smtp_sink.received] == [job["id"]]  # received once, not twice


class Killed(BaseException):
    """The process dies here: nothing after this line runs, no except or finally of ours."""


def test_a_notifier_killed_after_sending_but_before_recording_does_not_send_twice(
        make_app: Callable[..., ChuteApp], smtp_sink: Any, attempt: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(smtp_url=smtp_sink.url)
    attempt(app, app.upload(b"hi\n", "hi.txt")["id"])

    def die(self: Recorder, outcomes: Any) -> None:
        if any(o.outcome == "sent" for o in outcomes):
            raise Killed

    monkeypatch.setattr(Recorder, "record", die)
    first = app.runtime.notifier()
    with pytest.raises(Killed):
        asyncio.run(first.run_once())
    assert len(smtp_sink.received) == 1  # the server has it; our row does not say so
    monkeypatch.undo()

    with app.runtime.db.write() as session:  # the dead notifier's lease runs out
        session.execute(update(DELIVERIES).values(claim_until=utcnow() - timedelta(seconds=1)))
    second = app.runtime.notifier()
    second.store.recover()
    asyncio.run(second.run_once(due_only=False))
    (row,) = deliveries(app)
    assert row.status is S.UNCERTAIN
    assert len(smtp_sink.received) == 1


def test_a_notifier_killed_before_the_data_went_out_sends_it_once_after_recovery(
        make_app: Callable[..., ChuteApp], smtp_sink: Any, attempt: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(smtp_url=smtp_sink.url)
    attempt(app, app.upload(b"hi\n", "hi.txt")["id"])

    def die(self: Recorder, *args: Any, **kwargs: Any) -> bool:
        raise Killed

    monkeypatch.setattr(Recorder, "mark", die)
    with pytest.raises(Killed):
        asyncio.run(app.runtime.notifier().run_once())
    monkeypatch.undo()
    assert smtp_sink.received == []

    with app.runtime.db.write() as session:
        session.execute(update(DELIVERIES).values(claim_until=utcnow() - timedelta(seconds=1)))
    second = app.runtime.notifier()
    assert second.store.recover() == (1, 0)
    asyncio.run(second.run_once())
    (row,) = deliveries(app)
    assert row.status is S.SENT and row.attempts == 2
    assert len(smtp_sink.received) == 1


def test_a_handler_folder_overrides_its_emails_only(make_app: Callable[..., ChuteApp], smtp_sink: Any,
                                                    templates_dir: Path) -> None:
    (templates_dir / "shout").mkdir()
    (templates_dir / "shout" / "processed.subject.j2").write_text("LOUD: {{ job.filename }} is done")
    (templates_dir / "shout" / "processed.txt.j2").write_text("{{ job.result.loud }}\n")
    app = make_app(smtp_url=smtp_sink.url)
    app.upload(b"quiet words\n", "quiet.txt", notify="ann@example.com")
    app.upload(b"a,b\n", "sums.csv", notify="ann@example.com")
    app.drain()
    by_subject = {m.message["Subject"]: m.message for m in smtp_sink.to("ann@example.com")}
    assert set(by_subject) == {"LOUD: quiet.txt is done", "[Chute] sums.csv failed after 3 attempts"}
    loud = by_subject["LOUD: quiet.txt is done"]
    assert body(loud, "plain").strip() == "QUIET WORDS"
    assert "quiet.txt" in body(loud, "html")  # the shared HTML template, as the folder has none


def test_starttls_and_login_with_a_trusted_ca(make_app: Callable[..., ChuteApp], tls_sink: Any,
                                              tls_files: dict[str, Any]) -> None:
    app = make_app(smtp_url=f"smtp://user:secret@127.0.0.1:{tls_sink.port}?starttls=true",
                   smtp_ca_file=tls_files["ca_file"])
    app.upload(b"hi\n", "hi.txt")
    app.drain()
    (received,) = tls_sink.received
    assert received.login == "user"
    assert received.message["Subject"] == "[Chute] hi.txt is processed"


def test_starttls_with_verification_off_accepts_a_self_signed_server(make_app: Callable[..., ChuteApp],
                                                                     tls_sink: Any) -> None:
    app = make_app(smtp_url=f"smtp://user:secret@127.0.0.1:{tls_sink.port}?starttls=true", smtp_verify=False)
    app.upload(b"hi\n", "hi.txt")
    app.drain()
    assert [r.login for r in tls_sink.received] == ["user"]


def test_an_untrusted_certificate_is_refused_and_the_mail_waits(make_app: Callable[..., ChuteApp],
                                                                tls_sink: Any) -> None:
    app = make_app(smtp_url=f"smtp://user:secret@127.0.0.1:{tls_sink.port}?starttls=true")
    app.upload(b"hi\n", "hi.txt")
    app.drain()
    assert tls_sink.received == []
    (row,) = deliveries(app)
    assert row.status is S.PENDING and row.attempts == 0
    assert "CERTIFICATE_VERIFY_FAILED" in (row.last_error or "")


def test_a_wrong_password_sends_nothing_and_the_mail_waits(make_app: Callable[..., ChuteApp], tls_sink: Any,
                                                           tls_files: dict[str, Any]) -> None:
    app = make_app(smtp_url=f"smtp://user:wrong@127.0.0.1:{tls_sink.port}?starttls=true",
                   smtp_ca_file=tls_files["ca_file"], smtp_timeout=1.0)  # aiosmtpd stalls a failed login
    app.upload(b"hi\n", "hi.txt")
    app.drain()
    assert tls_sink.received == []
    assert {(r.status, r.attempts) for r in deliveries(app)} == {(S.PENDING, 0)}
