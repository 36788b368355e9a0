"""Chute is not an open mail relay: an uploader names a few recipients, inside the operator's domains;
re-running a failing job does not mail anyone again and again; an address is checked in bounded
time; a failure mail shows no server traceback; a login never goes to the mail server in clear text."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from chute import addresses
from chute.addresses import BadAddress, normalize
from chute.api.ingest import notify_list
from chute.errors import ConfigError, InvalidUploadField
from chute.models import Delivery, DeliveryStatus
from chute.notify.deliveries import DeliveryHook
from chute.notify.smtp import SmtpConfig
from chute.registry import load_handlers
from chute.settings import load_settings
from chute.testing import ChuteApp

S = DeliveryStatus
#: RFC 5321: the longest address SMTP carries
MAX_LENGTH = 254
MARKER = "SECRET-TRACEBACK-MARKER-7f3a"
FAILING = f'''
from chute import handler


@handler("text/csv", extensions=[".csv"])
def explode(upload, ctx):
    raise ValueError("the numbers do not add up")  # {MARKER}
'''


def deliveries(app: ChuteApp, job_id: str | None = None) -> list[Delivery]:
    with app.runtime.db.read() as session:
        query = select(Delivery).order_by(Delivery.id)
        if job_id:
            query = query.where(Delivery.job_id == job_id)
        return list(session.scalars(query))


def stored_files(app: ChuteApp) -> list[Path]:
    root = app.settings.files_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# --- 1. a cap on the recipients of one upload (CHUTE_NOTIFY_MAX) ---------------------------------------
def test_an_upload_naming_more_recipients_than_the_cap_is_refused_and_nothing_is_stored(
        chute_app: ChuteApp) -> None:
    eleven = ",".join(f"r{i}@example.com" for i in range(11))
    response = chute_app.client.post("/uploads", files={"file": ("x.csv", b"a,b\n1,2\n")}, data={"notify": eleven})
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "notify"]
    assert "at most 10" in problem["msg"] and "CHUTE_NOTIFY_MAX" in problem["msg"]
    assert stored_files(chute_app) == []
    assert chute_app.client.get("/jobs").json()["items"] == []


def test_the_cap_counts_repeated_fields_and_commas_together(chute_app: ChuteApp) -> None:
    fields = {"notify": [",".join(f"r{i}@example.com" for i in range(6)),
                         ",".join(f"s{i}@example.com" for i in range(5))]}
    response = chute_app.client.post("/uploads", files={"file": ("x.csv", b"a,b\n1,2\n")}, data=fields)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "notify"]


def test_repeats_of_one_address_count_once_toward_the_cap(chute_app: ChuteApp) -> None:
    ten = [f"r{i}@example.com" for i in range(10)]
    job = chute_app.upload(b"a,b\n1,2\n", "x.csv", notify=",".join(ten + ten + ["R0@EXAMPLE.COM"]))
    assert job["notify"] == ten


def test_repeats_are_forgiven_but_not_without_end(chute_app: ChuteApp) -> None:
    """Each listed address costs a parse, repeated or not: the list may be at most four times the cap."""
    response = chute_app.client.post("/uploads", files={"file": ("x.csv", b"a,b\n1,2\n")},
                                     data={"notify": ",".join(["ann@example.com"] * 41)})
    assert response.status_code == 422
    assert "at most 10" in response.json()["detail"][0]["msg"]
    assert stored_files(chute_app) == []


def test_the_cap_is_the_setting(tmp_path: Path) -> None:
    settings = load_settings(var_dir=tmp_path, notify_max=2)
    assert notify_list(["a@example.com, b@example.com"], settings) == ["a@example.com", "b@example.com"]
    with pytest.raises(InvalidUploadField, match=r"at most 2 per upload \(CHUTE_NOTIFY_MAX\)") as refused:
        notify_list(["a@example.com, b@example.com", "c@example.com"], settings)
    assert refused.value.field == "notify"
    with pytest.raises(InvalidUploadField, match="CHUTE_NOTIFY_MAX is 0"):
        notify_list(["a@example.com"], load_settings(var_dir=tmp_path, notify_max=0))


def test_the_upload_path_follows_the_cap_setting(make_app: Callable[..., ChuteApp]) -> None:
    app = make_app(notify_max=2)
    assert app.upload(b"a,b\n1,2\n", "x.csv", notify="a@example.com,b@example.com")["notify"] == [
        "a@example.com", "b@example.com"]
    response = app.client.post("/uploads", files={"file": ("x.csv", b"a,b\n1,2\n")},
                               data={"notify": "a@example.com,b@example.com,c@example.com"})
    assert response.status_code == 422 and "at most 2" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("value", ["-1", "1001", "ten"])
def test_a_bad_cap_stops_chute_at_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CHUTE_NOTIFY_MAX", value)
    with pytest.raises(ConfigError, match="CHUTE_NOTIFY_MAX"):
        load_settings()


# --- 2. an allow-list of recipient domains (CHUTE_NOTIFY_DOMAINS) ----------------------------------------
def test_a_recipient_outside_the_allowed_domains_is_refused(tmp_path: Path) -> None:
    settings = load_settings(var_dir=tmp_path, notify_domains="Example.com, @corp.example")
    assert settings.notify_domains == ["example.com", "corp.example"]
    assert notify_list(["ann@example.com,bob@EU.Example.com,cy@corp.example"], settings) == [
        "ann@example.com", "bob@eu.example.com", "cy@corp.example"]
    for outside in ("eve@badexample.com", "eve@example.com.evil.org", "eve@other.org"):
        with pytest.raises(InvalidUploadField, match=r"outside the domains.*CHUTE_NOTIFY_DOMAINS") as refused:
            notify_list([f"ann@example.com,{outside}"], settings)
        assert refused.value.field == "notify"


def test_an_upload_for_a_domain_outside_the_allow_list_is_refused_and_nothing_is_stored(
        make_app: Callable[..., ChuteApp]) -> None:
    app = make_app(notify_domains="example.com")
    response = app.client.post("/uploads", files={"file": ("x.csv", b"a,b\n1,2\n")},
                               data={"notify": "ann@example.com,eve@other.org"})
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "notify"] and "'eve@other.org' is outside" in problem["msg"]
    assert stored_files(app) == [] and app.client.get("/jobs").json()["items"] == []
    assert app.upload(b"a,b\n1,2\n", "x.csv", notify="ann@eu.example.com")["notify"] == ["ann@eu.example.com"]


def test_without_an_allow_list_any_domain_is_allowed(tmp_path: Path) -> None:
    assert notify_list(["eve@other.org"], load_settings(var_dir=tmp_path)) == ["eve@other.org"]


def test_a_default_recipient_outside_the_allowed_domains_stops_chute_at_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUTE_NOTIFY_DOMAINS", "example.com")
    monkeypatch.setenv("CHUTE_NOTIFY_DEFAULT", "ops@example.com,boss@other.org")
    with pytest.raises(ConfigError, match=r"CHUTE_NOTIFY_DEFAULT: 'boss@other.org' is outside CHUTE_NOTIFY_DOMAINS"):
        load_settings()


@pytest.mark.parametrize("value", ["exa mple.com", "@", "not_a_domain!"])
def test_a_bad_domain_stops_chute_at_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CHUTE_NOTIFY_DOMAINS", value)
    with pytest.raises(ConfigError, match="CHUTE_NOTIFY_DOMAINS"):
        load_settings()


def test_a_handlers_recipient_outside_the_allowed_domains_stops_chute_at_start(handlers_dir: Path) -> None:
    registry = load_handlers(handlers_dir)  # the ``shout`` handler tells team@example.com
    DeliveryHook(registry, defaults=[], mail_from="chute@example.com", public_url="https://c.example",
                 domains=["example.com"])
    with pytest.raises(ConfigError, match=r"@handler 'shout' notify=: 'team@example.com' is outside "
                                          r"CHUTE_NOTIFY_DOMAINS \(corp.example\)"):
        DeliveryHook(registry, defaults=[], mail_from="chute@example.com", public_url="https://c.example",
                     domains=["corp.example"])


def test_chute_with_a_handler_mailing_outside_the_allowed_domains_does_not_start(
        make_app: Callable[..., ChuteApp]) -> None:
    make_app(notify_domains="example.com")  # the ``shout`` handler's team@example.com fits
    with pytest.raises(ConfigError, match=r"@handler 'shout' notify=: 'team@example.com' is outside"):
        make_app(notify_domains="corp.example")


def test_a_recipient_outside_the_allowed_domains_gets_no_row_when_the_job_ends(
        make_app: Callable[..., ChuteApp], attempt: Callable[..., str], caplog: pytest.LogCaptureFixture) -> None:
    """An upload accepted before the allow-list was set, finished after: the hook, where every email is
    born, holds the line too."""
    app = make_app()
    job = app.upload(b"a,b\n1,2\n", "sums.csv", notify="ann@example.com,eve@other.org")
    app.runtime.mail_hook.rules = addresses.Recipients(domains=("example.com",))  # the operator sets it now
    with caplog.at_level(logging.WARNING, logger="chute.notify"):
        for _ in range(3):
            attempt(app, job["id"], ok=False)
    assert [r.recipient for r in deliveries(app, job["id"])] == ["ann@example.com"]
    assert any("event=mail-refused" in r.getMessage() and "eve@other.org" in r.getMessage() for r in caplog.records)


# --- 3. an operator's re-runs mail one recipient at most CHUTE_NOTIFY_RERUNS times -----------------------
def test_rerunning_a_failing_job_in_a_loop_mails_each_recipient_at_most_the_cap(
        chute_app: ChuteApp, caplog: pytest.LogCaptureFixture) -> None:
    job = chute_app.upload(b"{not json", "broken.json", notify="ann@example.com")
    chute_app.drain()
    assert chute_app.job(job["id"])["status"] == "failed"
    with caplog.at_level(logging.WARNING, logger="chute.notify"):
        for _ in range(5):  # six outcomes in all: past the default cap of three
            assert chute_app.client.post(f"/jobs/{job['id']}/retry").status_code == 202
            chute_app.drain()
            assert chute_app.job(job["id"])["status"] == "failed"
    assert [m["To"] for m in chute_app.outbox] == ["ann@example.com"] * 3
    shown = chute_app.job(job["id"])["notifications"]
    assert [(m["event"], m["recipient"], m["status"]) for m in shown] == [("failed", "ann@example.com", "sent")] * 3
    capped = [r.getMessage() for r in caplog.records if "event=mail-capped" in r.getMessage()]
    assert len(capped) == 3 and all(f"job={job['id']}" in m and "ann@example.com" in m for m in capped)


def test_the_rerun_cap_is_per_event(make_app: Callable[..., ChuteApp], attempt: Callable[..., str]) -> None:
    app = make_app(notify_reruns=1)  # through the setting, as an operator sets it
    job = app.upload(b"hello", "hello.txt")  # the ``shout`` handler tells team@example.com
    assert attempt(app, job["id"], ok=False) == "retrying"
    for _ in range(2):
        attempt(app, job["id"], ok=False)
    app.jobs.retry_failed(job["id"])
    assert attempt(app, job["id"], ok=True) == "processed"
    assert [(r.event, r.recipient) for r in deliveries(app, job["id"])] == [
        ("failed", "team@example.com"), ("processed", "team@example.com")]


@pytest.mark.parametrize("value", ["0", "101"])
def test_a_bad_rerun_cap_stops_chute_at_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CHUTE_NOTIFY_RERUNS", value)
    with pytest.raises(ConfigError, match="CHUTE_NOTIFY_RERUNS"):
        load_settings()


# --- 4. addresses are checked in bounded time --------------------------------------------------------------
PATHOLOGICAL = {
    "a@ repeated": "a@" * 500_000,
    "a long dotted local part": "a." * 500_000 + "a@example.com",
    "a long quoted local part": '"' + "\\a" * 500_000 + '"@example.com',
    "a long domain": "ann@" + "a." * 500_000 + "com",
}


@pytest.mark.parametrize("text", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_an_address_longer_than_smtp_allows_never_reaches_the_parser(monkeypatch: pytest.MonkeyPatch,
                                                                    text: str) -> None:
    """The bound is structural: the validator (and any regular expression in it) only ever sees a
    string of at most MAX_LENGTH characters, so its cost per address is a constant."""
    seen: list[int] = []
    real = addresses.validate_email

    def spy(value: str, **options: Any) -> Any:
        seen.append(len(value))
        return real(value, **options)

    monkeypatch.setattr(addresses, "validate_email", spy)
    with pytest.raises(BadAddress, match=f"longer than {MAX_LENGTH} characters") as refused:
        normalize(text)
    assert seen == []
    assert len(str(refused.value)) < 200, "the message quotes only the start of what it got"
    normalize("a" * 64 + "@" + "b" * 63 + ".example.com")
    assert seen and max(seen) <= MAX_LENGTH


def test_refusing_megabyte_addresses_costs_no_more_than_refusing_short_ones() -> None:
    """A hard ceiling far above the cost of a length check (microseconds each) and far below that of
    any parser reading a megabyte (tens of milliseconds each, even a linear one)."""
    budget = 1.0
    deadline = time.perf_counter() + budget
    refused = 0
    for _ in range(25):
        for text in PATHOLOGICAL.values():
            with pytest.raises(BadAddress):
                normalize(text)
            refused += 1
        assert time.perf_counter() < deadline, f"only {refused} refusals of 1 MB inputs in {budget} s"


def test_a_huge_notify_field_is_a_short_422_and_nothing_is_stored(chute_app: ChuteApp) -> None:
    field = "a." * 30_000 + "a@example.com"
    started = time.perf_counter()
    response = chute_app.client.post("/uploads", files={"file": ("x.csv", b"a,b\n1,2\n")}, data={"notify": field})
    assert time.perf_counter() - started < 5.0
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "notify"]
    assert len(response.content) < 1_000, "the refusal does not echo the field back"
    assert stored_files(chute_app) == []


# --- 5. a failure mail shows the error, not the server's traceback ------------------------------------------
def test_a_failure_mail_shows_the_error_but_no_part_of_it_the_traceback(
        make_app: Callable[..., ChuteApp], handlers_dir: Path) -> None:
    (handlers_dir / "cases.py").write_text(FAILING)
    app = make_app()
    job = app.upload(b"a,b\n1,2\n", "sums.csv", notify="ann@example.com")
    app.drain()
    error = app.job(job["id"])["error"]
    assert MARKER in error["traceback"], "the traceback stays on the job, for the operator"
    (mail,) = app.outbox
    raw = mail.as_bytes()
    assert MARKER.encode() not in raw and str(handlers_dir).encode() not in raw
    for part in (mail.get_body(("plain",)), mail.get_body(("html",))):
        assert part is not None
        text = part.get_content()
        assert "ValueError" in text and "the numbers do not add up" in text
        assert MARKER not in text and "Traceback" not in text and str(handlers_dir) not in text
    (row,) = deliveries(app, job["id"])
    assert MARKER not in str(row.context), "nor is it stored on the email's row"


def test_an_older_template_that_shows_the_traceback_still_renders(make_app: Callable[..., ChuteApp],
                                                                  handlers_dir: Path, templates_dir: Path) -> None:
    (handlers_dir / "cases.py").write_text(FAILING)
    (templates_dir / "failed.txt.j2").write_text("{{ job.error.type }}: {{ job.error.message }}\n"
                                                 "[{{ job.error.traceback }}]\n")
    app = make_app()
    app.upload(b"a,b\n1,2\n", "sums.csv", notify="ann@example.com")
    app.drain()
    (mail,) = app.outbox
    part = mail.get_body(("plain",))
    assert part is not None
    assert part.get_content().strip() == "ValueError: the numbers do not add up\n[]"


def test_the_preview_shows_no_traceback_either(templates_dir: Path) -> None:
    from chute.notify.preview import preview
    from chute.notify.templates import Templates

    mail = preview(Templates(templates_dir), "failed", None, mail_from="chute@example.com",
                   public_url="https://c.example")
    assert b"Traceback" not in mail.data and b"line contains NUL" in mail.data


# --- 6. a login never goes to the mail server in clear text ------------------------------------------------
@pytest.mark.parametrize(("url", "start_tls"), [
    ("smtp://user:pass@mail.example.com:587", True),
    ("smtp://user@mail.example.com", True),
    ("smtp://user:pass@mail.example.com:25?starttls=true", True),
    ("smtp://user:pass@mail.example.com:25?starttls=false", False),
    ("smtp://mail.example.com:25", None),
])
def test_a_login_requires_starttls_unless_the_url_turns_it_off(url: str, start_tls: bool | None) -> None:
    config = SmtpConfig.from_url(url)
    assert config.start_tls is start_tls
    assert config.clear_text_login is (start_tls is False)


def test_a_login_url_keeps_the_port_it_names_or_the_default() -> None:
    assert SmtpConfig.from_url("smtp://user:pass@mail.example.com").port == 25
    assert SmtpConfig.from_url("smtp://user:pass@mail.example.com:587").safe_url == (
        "smtp://user:***@mail.example.com:587?starttls=true")


def test_a_server_without_starttls_never_gets_the_password_and_the_mail_waits(
        make_app: Callable[..., ChuteApp], plain_auth_sink: Any, caplog: pytest.LogCaptureFixture) -> None:
    sink, logins = plain_auth_sink
    app = make_app(smtp_url=f"smtp://user:secret@127.0.0.1:{sink.port}")
    app.upload(b"hi\n", "hi.txt")
    with caplog.at_level(logging.WARNING, logger="chute.notify"):
        app.drain()
    assert logins.seen == [] and sink.received == []
    (row,) = deliveries(app)
    assert row.status is S.PENDING and row.attempts == 0
    assert "does not offer STARTTLS" in (row.last_error or "")
    assert "secret" not in (row.last_error or "")
    assert any("does not offer STARTTLS" in r.getMessage() and "starttls=false" in r.getMessage()
               for r in caplog.records)


def test_saying_starttls_false_allows_a_clear_text_login_with_a_warning(
        make_app: Callable[..., ChuteApp], plain_auth_sink: Any, caplog: pytest.LogCaptureFixture) -> None:
    sink, logins = plain_auth_sink
    with caplog.at_level(logging.WARNING, logger="chute.notify"):
        app = make_app(smtp_url=f"smtp://user:secret@127.0.0.1:{sink.port}?starttls=false")
    app.upload(b"hi\n", "hi.txt")
    app.drain()
    assert logins.seen == [b"secret"] and [r.login for r in sink.received] == ["user"]
    assert any("clear text" in r.getMessage() and "secret" not in r.getMessage() for r in caplog.records)


def test_a_login_url_without_the_option_upgrades_then_logs_in(make_app: Callable[..., ChuteApp], tls_sink: Any,
                                                              tls_files: dict[str, Any]) -> None:
    app = make_app(smtp_url=f"smtp://user:secret@127.0.0.1:{tls_sink.port}", smtp_ca_file=tls_files["ca_file"])
    app.upload(b"hi\n", "hi.txt")
    app.drain()
    assert [r.login for r in tls_sink.received] == ["user"]
