"""Notification fixtures: a real SMTP server (aiosmtpd on a free loopback port) that records what it
accepts and can be stopped, started again, made to refuse or to stall; handlers and templates of the
test's own; and a ChuteApp whose notifier talks to that server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import socket
import ssl
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from chute.testing import ChuteApp

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "notifications" / "templates"

HANDLERS = '''
from chute import Reject, handler, retry


@handler("text/plain", extensions=[".txt"], notify=["team@example.com"])
def shout(upload, ctx):
    """Processed, and the team hears about it (a handler's own notify list)."""
    return {"characters": upload.size, "loud": upload.read_bytes().decode().upper()[:40]}


@handler("text/csv", extensions=[".csv"])
@retry(attempts=3, backoff=0.01, max_backoff=0.01)
def sums(upload, ctx):
    """Fails every time: three attempts, then ``failed``."""
    raise ValueError("the numbers do not add up")


@handler("application/json", extensions=[".json"])
def strict(upload, ctx):
    raise Reject("not the JSON we want")
'''


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    login: str | None

    @property
    def message(self) -> EmailMessage:
        parsed: EmailMessage = email.message_from_bytes(self.data.replace(b"\r\n", b"\n"),
                                                         policy=email.policy.default)
        return parsed


class SmtpSink:
    """aiosmtpd in its own thread on ``port``. ``stop()``/``start()`` take it down and bring it back on
    the same port; ``rcpt_reply``/``data_reply`` make it answer otherwise than 250; ``stall_data``
    makes it accept the message and then not answer for that many seconds."""

    def __init__(self, port: int, **smtp_options: Any) -> None:
        self.port = port
        self.options = smtp_options
        self.received: list[Received] = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        self.stall_data = 0.0
        self.connections = 0
        self._lock = threading.Lock()
        self._controller: Any = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, ready_timeout=10,
                                      **self.options)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def add(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.recipients]


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        self.sink.connections += 1
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if self.sink.rcpt_reply:
            return self.sink.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.data_reply:
            return self.sink.data_reply
        login = session.auth_data.login.decode() if session.authenticated and session.auth_data else None
        self.sink.add(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content),
                               login))
        if self.sink.stall_data:
            await asyncio.sleep(self.sink.stall_data)
        return "250 OK: queued"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(free_port()).start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Any]:
    """A throwaway CA, a certificate for 127.0.0.1 signed by it, and the CA as a PEM file."""
    import trustme  # the dev extra has it; missing, the test fails rather than skips

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"server_context": server, "ca_file": ca_file}


@pytest.fixture
def tls_sink(tls_files: dict[str, Any]) -> Iterator[SmtpSink]:
    """STARTTLS required, then AUTH required (user ``user``, password ``secret``), certificate from
    ``tls_files``' throwaway CA."""
    from aiosmtpd.smtp import AuthResult

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (auth_data.login, auth_data.password) == (b"user", b"secret")
        return AuthResult(success=ok, auth_data=auth_data if ok else None)

    sink = SmtpSink(free_port(), tls_context=tls_files["server_context"], require_starttls=True,
                    authenticator=authenticate, auth_required=True).start()
    try:
        yield sink
    finally:
        sink.stop()


class _Logins:
    """An authenticator that accepts ``user``/``secret`` and remembers every login it was sent."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        self.seen.append(auth_data.password)
        ok = (auth_data.login, auth_data.password) == (b"user", b"secret")
        return AuthResult(success=ok, auth_data=auth_data if ok else None)


@pytest.fixture
def plain_auth_sink() -> Iterator[tuple[SmtpSink, _Logins]]:
    """A server that offers AUTH over a connection it never encrypts (no STARTTLS at all): a client
    that logs in there sends its password in clear text."""
    logins = _Logins()
    sink = SmtpSink(free_port(), authenticator=logins, auth_require_tls=False).start()
    try:
        yield sink, logins
    finally:
        sink.stop()


@pytest.fixture
def handlers_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "handlers"
    folder.mkdir()
    (folder / "cases.py").write_text(textwrap.dedent(HANDLERS))
    return folder


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    """A copy of the project's templates, for a test to add overrides to."""
    folder = tmp_path / "templates"
    shutil.copytree(TEMPLATES, folder, ignore=shutil.ignore_patterns("*.md"))
    return folder


@pytest.fixture
def make_app(tmp_path: Path, handlers_dir: Path, templates_dir: Path) -> Iterator[Callable[..., ChuteApp]]:
    """``make_app(**settings)``: a ChuteApp on this test's handlers and templates. With ``smtp_url`` its
    notifier sends over SMTP instead of into ``outbox``."""
    apps: list[ChuteApp] = []

    def make(**settings: Any) -> ChuteApp:
        settings.setdefault("templates", templates_dir)
        settings.setdefault("public_url", "https://chute.example.com")
        settings.setdefault("mail_from", "Chute <chute@example.com>")
        app = ChuteApp(tmp_path / f"var{len(apps)}", handlers=handlers_dir, **settings)
        if settings.get("smtp_url"):
            app.notifier = app.runtime.notifier(reconnect_max=0.2, recover_every=0.2)
        apps.append(app)
        return app

    yield make
    for app in apps:
        if app.notifier.running:
            app.notifier.stop()
        app.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word: a mail server that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.fixture
def attempt() -> Callable[..., str]:
    """``attempt(app, job_id, ok=True|False)``: one attempt of a job, as a worker would run and record it
    (a failure is a retryable error): the test sees every step, not only the end."""
    from chute.jobs import Finished
    from chute.lifecycle import Claim
    from chute.sources import JobMessage
    from chute.status import AttemptResult, Outcome

    def run(app: ChuteApp, job_id: str, ok: bool = True) -> str:
        from sqlalchemy import update

        from chute.models import Job

        with app.runtime.db.write() as session:  # a retry is due now, as drain() makes it
            session.execute(update(Job).where(Job.id == job_id, Job.next_attempt_at.is_not(None))
                            .values(next_attempt_at=app.clock()))
        _, claimed = app.jobs.record_and_claim([], [JobMessage(job_id)], "test-worker", None, 300.0)
        assert claimed[0].decision is Claim.RUN and claimed[0].job is not None, claimed
        number = claimed[0].job.attempts
        result = AttemptResult(Outcome.PROCESSED, result={"ok": True}) if ok else AttemptResult(
            Outcome.ERROR, error={"type": "ValueError", "message": f"attempt {number} failed", "traceback": "..."},
            covered=True)
        recorded, _ = app.jobs.record_and_claim([Finished(job_id, number, result)], [], "test-worker",
                                                app.runtime.registry, 300.0)
        assert recorded[0].transition is not None
        return recorded[0].transition.status.value

    return run


@pytest.fixture
def claim_concurrently() -> Callable[..., dict[str, list[int]]]:
    """``notifiers`` threads claiming ``batch`` rows at a time until none are left: owner -> ids claimed."""

    def run(store: Any, notifiers: int, batch: int) -> dict[str, list[int]]:
        got: dict[str, list[int]] = {}
        start = threading.Barrier(notifiers)

        def claim(owner: str) -> None:
            start.wait()
            mine: list[int] = []
            while claimed := store.claim(owner, batch):
                mine += [b.id for b in claimed]
            got[owner] = mine

        threads = [threading.Thread(target=claim, args=(f"n{i}",)) for i in range(notifiers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a notifier thread did not finish"
        return got

    return run
