"""No mail server: ``.eml`` files in the .eml folder (``make run`` on a laptop), and the testing kit's
``chute_app.outbox`` list."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from pathlib import Path

from chute.notify import EmlTransport
from chute.testing import ChuteApp


def test_without_smtp_each_mail_is_a_valid_eml_file_in_the_outbox_folder(make_app: Callable[..., ChuteApp]) -> None:
    app = make_app()
    app.notifier = app.runtime.notifier()  # what `chute serve` builds: no CHUTE_SMTP_URL → the .eml folder
    job = app.upload(b"hello\n", "hello.txt", notify="ann@example.com")
    app.drain()
    folder = app.settings.eml_folder
    files = sorted(folder.glob("*.eml"))
    assert len(files) == 2
    messages = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]
    assert sorted(m["To"] for m in messages) == ["ann@example.com", "team@example.com"]
    for message in messages:
        assert not message.defects
        assert message["Subject"] == "[Chute] hello.txt is processed"
        assert message["X-Chute-Job"] == job["id"]
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert not list(folder.glob("*.part"))


def test_writing_the_same_message_again_replaces_its_file(tmp_path: Path, make_app: Callable[..., ChuteApp]) -> None:
    import asyncio

    from chute.notify.preview import preview

    app = make_app()
    mail = preview(app.notifier.templates, "processed", None, mail_from="chute@example.com",
                   public_url="https://chute.example.com")
    transport = EmlTransport(tmp_path / "outbox")

    async def write_twice() -> None:
        async with transport:
            await transport.content(mail)
            await transport.content(mail)

    asyncio.run(write_twice())
    assert len(list((tmp_path / "outbox").iterdir())) == 1


def test_the_testing_kit_outbox_holds_the_mail_drain_sent(make_app: Callable[..., ChuteApp]) -> None:
    app = make_app(notify_default=["ops@example.com"])
    app.upload(b"hello\n", "hello.txt")
    app.upload(b"a,b\n", "sums.csv", notify="ann@example.com")
    app.drain()
    assert sorted((m["To"], m["Subject"]) for m in app.outbox) == [
        ("ann@example.com", "[Chute] sums.csv failed after 3 attempts"),
        ("ops@example.com", "[Chute] hello.txt is processed"),
        ("ops@example.com", "[Chute] sums.csv failed after 3 attempts"),
        ("team@example.com", "[Chute] hello.txt is processed"),
    ]
    app.drain()
    assert len(app.outbox) == 4  # sent once, not again on the next drain
    body = app.outbox[0].get_body(("plain",))
    assert body is not None and "Hello," in body.get_content()  # type: ignore[attr-defined]


def test_the_chute_app_fixture_has_an_outbox_that_drain_fills(chute_app: ChuteApp) -> None:
    assert chute_app.outbox == []
    job = chute_app.upload(b"hello\n", "hello.txt", notify="ann@example.com")
    chute_app.drain()
    assert [(m["To"], m["Subject"], m["X-Chute-Job"]) for m in chute_app.outbox] == [
        ("ann@example.com", "[Chute] hello.txt is processed", job["id"])]
