"""The commands that run the notifier: `chute serve` with no mail server (what `make run` does) and
`chute notifier` on its own, as real processes."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from chute.testing import ChuteApp

pytestmark = pytest.mark.slow


@contextmanager
def chute(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    log = cwd / f"chute-{args[0]}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chute.cli", *args], env=env, cwd=cwd, text=True,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        except BaseException:
            sys.stderr.write(f"--- {log.name} ---\n{log.read_text()}\n")
            raise
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def environment(tmp_path: Path, handlers_dir: Path, templates_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_")}
    env.update({"CHUTE_VAR_DIR": str(tmp_path / "var"), "CHUTE_HANDLERS": str(handlers_dir),
                "CHUTE_TEMPLATES": str(templates_dir), "CHUTE_WORKER_CONCURRENCY": "1",
                "CHUTE_MAIL_FROM": "Chute <chute@example.com>"})
    return env


def emails_in(folder: Path) -> list[Any]:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in sorted(folder.glob("*.eml"))]


def test_serve_without_a_mail_server_writes_each_email_to_the_eml_folder(
        tmp_path: Path, handlers_dir: Path, templates_dir: Path, port: int, wait: Callable[..., Any]) -> None:
    env = environment(tmp_path, handlers_dir, templates_dir)
    url = f"http://127.0.0.1:{port}"
    with chute(["serve", "--port", str(port)], env, tmp_path) as proc:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "chute-serve.log").read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait(ready, 30, 0.1, message="chute serve to be ready")
        response = httpx.post(f"{url}/uploads", files={"file": ("notes.txt", b"hello\n")},
                              data={"notify": "ann@example.com"})
        assert response.status_code == 202
        eml_folder = tmp_path / "var" / "mail"
        found = wait(lambda: len(emails_in(eml_folder)) == 2 and emails_in(eml_folder), 30, 0.1,
                     message="two .eml files in var/mail")
    assert sorted(m["To"] for m in found) == ["ann@example.com", "team@example.com"]
    assert {m["Subject"] for m in found} == {"[Chute] notes.txt is processed"}
    assert "written to" in (tmp_path / "chute-serve.log").read_text()  # and logged


def test_the_notifier_command_sends_what_jobs_left_for_it(tmp_path: Path, handlers_dir: Path,
                                                          templates_dir: Path, attempt: Callable[..., str],
                                                          wait: Callable[..., Any]) -> None:
    app = ChuteApp(tmp_path / "var", handlers=handlers_dir, templates=templates_dir)
    try:
        attempt(app, app.upload(b"hello\n", "notes.txt")["id"])  # a finished job, its email not sent yet
    finally:
        app.close()
    env = environment(tmp_path, handlers_dir, templates_dir)
    eml_folder = tmp_path / "var" / "mail"
    with chute(["notifier"], env, tmp_path) as proc:
        found = wait(lambda: emails_in(eml_folder), 30, 0.1, message="the email in var/mail")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert [m["To"] for m in found] == ["team@example.com"]
