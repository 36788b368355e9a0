"""The ``chute`` command: run the parts (serve, api, worker, notifier) and talk to a running Chute."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from chute.errors import ChuteError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Chute: upload a file, the handler for its type runs on a worker.")

Url = Annotated[str, typer.Option("--url", envvar="CHUTE_URL", help="where Chute's API answers")]
DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = {"processed", "failed", "cancelled"}


def _runtime(migrate: bool = True, host: str | None = None) -> Any:
    """``host``: the address ``serve``/``api`` will listen on, checked before anything is built."""
    from chute.runtime import Runtime, configure_logging
    from chute.settings import load_settings

    settings = load_settings()
    if host is not None:
        _check_exposure(host, settings)
    configure_logging(settings.log_level)
    return Runtime.build(settings, migrate=migrate)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is this machine's loopback (127.0.0.0/8, ::1)."""
    import ipaddress
    import socket

    name = host.strip().removeprefix("[").removesuffix("]")
    if not name:
        return False  # uvicorn binds every interface
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    try:
        return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback
                                   for info in infos)
    except ValueError:
        return False


def _check_exposure(host: str, settings: Any) -> None:
    """Listening beyond loopback needs keys, or CHUTE_ALLOW_OPEN=1 to say an open Chute is meant."""
    if settings.api_keys or is_loopback(host):
        return
    if not settings.allow_open:
        raise ConfigError(f"--host {host} is reachable from other machines and CHUTE_API_KEYS is not set: "
                          f"set CHUTE_API_KEYS (clients send Authorization: Bearer KEY), or CHUTE_ALLOW_OPEN=1 "
                          f"to serve it open, or listen on 127.0.0.1")
    typer.echo(f"chute: warning: listening on {host} with no CHUTE_API_KEYS (CHUTE_ALLOW_OPEN=1): anyone who "
               f"reaches it can upload, read every job and download every file", err=True)


def _start_notifier(rt: Any) -> Any:
    """The notifier in its own thread: mail never waits on a handler, nor a handler on mail."""
    from chute.notify import check_templates

    notifier = rt.notifier()
    check_templates(notifier.templates, rt.settings)
    notifier.start()
    return notifier


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"chute: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          concurrency: Annotated[int | None, typer.Option(help="handler processes")] = None) -> None:
    """API + worker + notifier in one process, on embedded defaults: the one command for a fresh machine."""
    from chute.api import create_app, server

    rt = _runtime(host=host)
    notifier = _start_notifier(rt)
    worker = rt.worker(concurrency)
    thread = threading.Thread(target=worker.run, name="chute-worker", daemon=True)
    thread.start()
    typer.echo(f"chute: serving on http://{host}:{port} (docs at /docs); jobs queue in {rt.describe_queue}; "
               f"mail via {notifier.describe}", err=True)
    try:
        server.run(create_app(rt), rt.settings, host, port)
    finally:
        worker.stop()
        thread.join(timeout=60)
        notifier.stop()
        rt.close()


@app.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """The HTTP API alone (run workers with ``chute worker``)."""
    from chute.api import create_app, server

    rt = _runtime(host=host)
    try:
        server.run(create_app(rt), rt.settings, host, port)
    finally:
        rt.close()


@app.command()
def worker(concurrency: Annotated[int | None, typer.Option(help="handler processes")] = None) -> None:
    """A worker: consumes jobs, runs handlers, records results, sends the emails. Run as many as you like."""
    rt = _runtime()
    w = rt.worker(concurrency)
    rt.relay.start()  # due retries and expired leases are handed on from here too
    notifier = _start_notifier(rt)

    def _stop(signum: int, _frame: Any) -> None:
        if w.stopping.is_set():
            typer.echo(f"chute: {signal.Signals(signum).name} again: handing in-flight jobs back now", err=True)
            w.stop(now=True)
            return
        typer.echo(f"chute: {signal.Signals(signum).name}: finishing in-flight jobs (up to "
                   f"{w.shutdown_grace:g}s; signal again to hand them back now)", err=True)
        w.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        w.run()
    finally:
        rt.relay.stop()
        notifier.stop()
        rt.close()


@app.command()
def notifier() -> None:
    """Only the notifier: sends the emails jobs call for (workers send them too; this is for a host of its own)."""
    rt = _runtime()
    n = _start_notifier(rt)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        typer.echo(f"chute: {signal.Signals(signum).name}: stopping the notifier", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    typer.echo(f"chute: notifier sending through {n.describe}", err=True)
    try:
        while not stop.wait(1.0):
            if not n.running:
                _fail("the notifier thread stopped; see the log above", 1)
    finally:
        n.stop()
        rt.close()


@app.command("preview-email")
def preview_email(
        event: Annotated[str, typer.Option(help="processed or failed")] = "processed",
        handler: Annotated[str | None, typer.Option(help="use this handler's template overrides")] = None,
        to: Annotated[str, typer.Option(help="the recipient shown")] = "you@example.com",
        eml: Annotated[Path | None, typer.Option(help="also write the whole message to this .eml file")] = None,
        html: Annotated[bool, typer.Option("--html/--no-html", help="print the HTML part too")] = True) -> None:
    """Render an email template with sample data, to check an edit before a real job uses it."""
    from chute.notify import templates_for
    from chute.notify.preview import preview
    from chute.notify.templates import EVENTS, TemplateProblem
    from chute.settings import load_settings

    if event not in EVENTS:
        _fail(f"--event must be one of {', '.join(EVENTS)}")
    settings = load_settings()
    templates = templates_for(settings)
    templates.check()
    try:
        mail = preview(templates, event, handler, mail_from=settings.mail_from, public_url=settings.public_url,
                       recipient=to)
    except TemplateProblem as exc:
        _fail(f"the template does not render: {exc}", 1)
        return
    message = mail.parsed()
    sources = templates.source_of(event, handler)
    typer.echo("templates: " + ", ".join(str(path) for path in sources.values()))
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        typer.echo(f"{name}: {message[name]}")
    for subtype in ("plain", "html") if html else ("plain",):
        part = message.get_body((subtype,))
        typer.echo(f"\n--- text/{subtype} ---")
        typer.echo(part.get_content() if part is not None else "(missing)")  # type: ignore[attr-defined]
    if eml is not None:
        eml.write_bytes(mail.data)
        typer.echo(f"\nwrote {eml}")


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (the other commands do it at start too)."""
    rt = _runtime()
    rt.close()
    typer.echo("chute: database is up to date")


def _client(url: str) -> Any:
    import httpx

    key = os.environ.get("CHUTE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30.0, read=300.0))


def _check(response: Any) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        _fail(f"{response.status_code}: {detail}", 1)
    return response.json()


@app.command()
def upload(files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True)],
           notify: Annotated[list[str] | None, typer.Option("--notify", help="email to tell when done")] = None,
           handler: Annotated[str | None, typer.Option(help="force a handler by name")] = None,
           wait: Annotated[bool, typer.Option("--wait", help="wait for each job to finish")] = False,
           url: Url = DEFAULT_URL) -> None:
    """Upload files (one job each), with a progress bar."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    failed = False
    with _client(url) as client, Progress("{task.description}", BarColumn(), DownloadColumn(),
                                          TransferSpeedColumn(), transient=True) as progress:
        for path in files:
            task = progress.add_task(path.name, total=path.stat().st_size)
            with path.open("rb") as fh:
                wrapped = _ProgressReader(fh, lambda n, t=task: progress.advance(t, n))
                data: dict[str, Any] = {"notify": notify or []}
                if handler:
                    data["handler"] = handler
                job = _check(client.post("/uploads", files={"file": (path.name, wrapped)}, data=data))
            progress.remove_task(task)
            if wait:
                job = _wait(client, job["id"])
                failed |= job["status"] == "failed"
            typer.echo(json.dumps(job if wait else {k: job[k] for k in ("id", "status", "handler")}))
    if failed:
        raise typer.Exit(1)


class _ProgressReader:
    def __init__(self, fh: Any, advance: Any) -> None:
        self.fh, self.advance = fh, advance

    def read(self, size: int = -1) -> bytes:
        chunk: bytes = self.fh.read(size if size and size > 0 else 1024 * 1024)
        self.advance(len(chunk))
        return chunk


def _wait(client: Any, job_id: str, timeout: float = 3600) -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        job = _check(client.get(f"/jobs/{job_id}"))
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


# --- jobs: list, one view, cancel, re-run ------------------------------------------------------------
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table")]
JobRef = Annotated[str, typer.Argument(help="a job id, or its last 8 characters as `chute jobs` shows them "
                                            "(any unique start or end of it, 4 characters or more)")]
WATCH_EVERY = 1.0
_HEX_REF = re.compile(r"[0-9a-f]{4,32}")


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _resolve(client: Any, ref: str) -> str:
    """A whole id, or the one job whose id starts or ends with ``ref``; anything else is refused, the
    candidates named."""
    ref = ref.strip().lower().lstrip("…")
    if not _HEX_REF.fullmatch(ref):
        _fail(f"{ref!r} is not a job id (hex, 4 to 32 characters)", 1)
    if len(ref) == 32:
        return ref
    found: dict[str, None] = {}
    for side in ("id_suffix", "id_prefix"):
        for job in _check(client.get("/jobs", params={side: ref, "limit": 3}))["items"]:
            found[job["id"]] = None
    if not found:
        _fail(f"no job id starts or ends with {ref}", 1)
    if len(found) > 1:
        _fail(f"{ref} is ambiguous, it matches {', '.join(found)}{' and more' if len(found) > 2 else ''}: "
              "give more of the id", 1)
    return next(iter(found))


@app.command()
def jobs(status: Annotated[str | None, typer.Option(
             help="pending, running, retrying, processed, failed or cancelled")] = None,
         handler: str | None = None,
         q: Annotated[str | None, typer.Option("--search", "-q", help="a part of the file name, or the start of "
                                               "a sha256 (six hex digits or more)")] = None,
         limit: int = 20,
         watch: Annotated[bool, typer.Option("--watch", help="a live table, refreshed every second until Ctrl-C")]
         = False,
         as_json: AsJson = False, url: Url = DEFAULT_URL) -> None:
    """The newest jobs (ids shortened to their last 8 characters: `chute job`, `cancel` and `retry` take them)."""
    from rich.console import Console

    from chute.terminal import jobs_table

    if watch and as_json:
        _fail("--watch shows a live table; --json prints the list once: choose one")
    params = {k: v for k, v in {"status": status, "handler": handler, "q": q, "limit": limit}.items() if v}
    with _client(url) as client:
        if watch:
            _watch(client, params, Console())
            return
        page = _check(client.get("/jobs", params=params))
    if as_json:
        _print_json(page)
        return
    Console().print(jobs_table(page["items"]))


def _watch(client: Any, params: dict[str, Any], console: Any) -> None:
    """Ask for the list every second and redraw it in place; a broken connection is shown and retried."""
    import httpx
    from rich.live import Live

    from chute.terminal import jobs_table

    with Live(console=console, auto_refresh=False) as live:
        try:
            while True:
                stamp = time.strftime("%H:%M:%S")
                try:
                    page = _check(client.get("/jobs", params=params))
                    caption = f"{stamp} · every {WATCH_EVERY:g} s · Ctrl-C to stop"
                    live.update(jobs_table(page["items"], caption=caption), refresh=True)
                except httpx.HTTPError as exc:
                    live.update(f"{stamp} · cannot reach {client.base_url} ({type(exc).__name__}); trying again",
                                refresh=True)
                _pause(WATCH_EVERY)
        except KeyboardInterrupt:
            pass


@app.command("job")
def job_cmd(ref: JobRef, as_json: AsJson = False, url: Url = DEFAULT_URL) -> None:
    """One job from upload to email: the file, its handler, every attempt, the result, artifacts, emails."""
    from rich.console import Console

    from chute.terminal import job_view

    with _client(url) as client:
        job_id = _resolve(client, ref)
        job = _check(client.get(f"/jobs/{job_id}"))
        attempts = _check(client.get(f"/jobs/{job_id}/attempts"))
    if as_json:
        _print_json({"job": job, "attempts": attempts})
        return
    Console().print(job_view(job, attempts))


@app.command()
def cancel(ref: JobRef,
           kill: Annotated[bool, typer.Option("--kill", help="a running job: stop its attempt now, not at its end")]
           = False,
           url: Url = DEFAULT_URL) -> None:
    """Cancel a job: pending or retrying, it never runs again; running, it ends when its attempt does (or at
    once with --kill). Nobody is mailed."""
    with _client(url) as client:
        job_id = _resolve(client, ref)
        job = _check(client.post(f"/jobs/{job_id}/cancel", params={"kill": "true"} if kill else {}))
    if job["status"] == "running":
        typer.echo(f"chute: job {job_id} is running: " + ("its worker stops it now" if job["cancel_requested"] ==
                   "kill" else "it ends cancelled when its attempt ends (--kill stops it now)"), err=True)
    typer.echo(json.dumps({k: job[k] for k in ("id", "status", "handler", "cancel_requested")}))


@app.command("retry")
def retry_cmd(ref: Annotated[str | None, typer.Argument(help="the failed job to re-run (as `chute job` takes it)")]
              = None,
              all_failed: Annotated[bool, typer.Option("--all-failed", help="re-run every failed job")] = False,
              handler: Annotated[str | None, typer.Option(help="with --all-failed: only this handler's")] = None,
              url: Url = DEFAULT_URL) -> None:
    """Re-run a failed job, or every failed one (--all-failed, optionally of one --handler)."""
    if (ref is None) == (not all_failed) or (handler and not all_failed):
        _fail("give a job id, or --all-failed [--handler H]")
    with _client(url) as client:
        if all_failed:
            params = {"status": "failed", **({"handler": handler} if handler else {})}
            done = _check(client.post("/jobs/retry", params=params))
            typer.echo(f"chute: re-running {done['count']} failed job{'s' if done['count'] != 1 else ''}", err=True)
            typer.echo(json.dumps(done))
            return
        assert ref is not None
        job = _check(client.post(f"/jobs/{_resolve(client, ref)}/retry"))
    typer.echo(json.dumps({k: job[k] for k in ("id", "status", "handler")}))


@app.command()
def handlers(as_json: AsJson = False, url: Url = DEFAULT_URL) -> None:
    """The handlers a running Chute has, with their types and retry policies."""
    with _client(url) as client:
        specs = _check(client.get("/handlers"))
    if as_json:
        _print_json(specs)
        return
    for spec in specs:
        retry = spec["retry"]
        typer.echo(f"{spec['name']:<16} {', '.join(spec['types'] + spec['extensions']):<40} "
                   f"attempts={retry['attempts']} backoff={retry['backoff']}s timeout={spec['timeout']:g}s")


@app.command("new-handler")
def new_handler(
        name: Annotated[str, typer.Argument(help="the handler's name: its function's and its module's, like "
                                                 "markdown_headings")],
        mime: Annotated[str, typer.Option("--type", help="the MIME type it handles, like text/markdown (or a "
                                                         "pattern, like image/*)")],
        ext: Annotated[list[str] | None, typer.Option("--ext", help="an extension it claims, like .md "
                                                                    "(repeatable)")] = None,
        tests: Annotated[Path | None, typer.Option(help="the folder its test goes in (default: tests/handlers of "
                                                        "the project that holds the handlers folder)")] = None) -> None:
    """Scaffold a handler in CHUTE_HANDLERS (handlers/NAME.py) and its test (tests/handlers/test_NAME.py),
    which pass `make test` as written. Nothing is overwritten, and nothing is written that would stop Chute
    at start (a name, type or extension another handler has)."""
    from chute import scaffold
    from chute.settings import load_settings

    try:
        written = scaffold.new_handler(name, mime, ext or [], load_settings().handlers, tests)
    except scaffold.ScaffoldRefused as exc:
        _fail(f"new-handler: {exc}")
        return
    for path in written:
        typer.echo(f"wrote {scaffold.shown(path)}")
    typer.echo(f"next: make it yours, then `make test` (or .venv/bin/pytest {scaffold.shown(written[-1])})")


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"chute: {exc}", err=True)
        sys.exit(2)
    except ChuteError as exc:
        typer.echo(f"chute: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
