"""Settings: defaults that need no server, and one clear line for a bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chute.errors import ConfigError
from chute.settings import load_settings


def test_defaults_keep_everything_under_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.db_url == "sqlite:///var/chute.db"
    assert settings.queue == "sql", "no broker to install: the database is the queue"
    assert settings.files_dir == Path("var/files")
    assert settings.max_upload_bytes == 100 * 1024 * 1024


@pytest.mark.parametrize(("url", "queue"), [("", "sql"), ("sql://", "sql"), ("amqp://guest:guest@mq:5672//", "amqp"),
                                            ("memory://", "memory")])
def test_the_broker_url_picks_where_jobs_wait(monkeypatch: pytest.MonkeyPatch, url: str, queue: str) -> None:
    monkeypatch.setenv("CHUTE_BROKER_URL", url)
    assert load_settings().queue == queue


def test_the_old_embedded_broker_url_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUTE_BROKER_URL", "filesystem://var/broker")
    with pytest.raises(ConfigError, match=r"^invalid setting CHUTE_BROKER_URL: .*database is the queue"):
        load_settings()


def test_list_settings_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUTE_API_KEYS", "one, two,,three")
    monkeypatch.setenv("CHUTE_NOTIFY_DEFAULT", "ops@example.com,dev@example.com")
    settings = load_settings()
    assert settings.api_keys == ["one", "two", "three"]
    assert settings.notify_default == ["ops@example.com", "dev@example.com"]


@pytest.mark.parametrize(("name", "value"), [
    ("CHUTE_MAX_UPLOAD_BYTES", "lots"),
    ("CHUTE_MAX_UPLOAD_BYTES", "-1"),
    ("CHUTE_BROKER_URL", "kafka://localhost"),
    ("CHUTE_DATABASE_URL", "not a url"),
    ("CHUTE_SMTP_URL", "http://mail"),
    ("CHUTE_NOTIFY_DEFAULT", "ops@example.com,not-an-email"),
    ("CHUTE_PUBLIC_URL", "ftp://x"),
    ("CHUTE_WORKER_CONCURRENCY", "0"),
])
def test_a_bad_value_is_one_line_naming_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert name in message
    assert "\n" not in message


def test_the_command_stops_at_start_with_that_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CHUTE_MAX_UPLOAD_BYTES": "lots", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "chute.cli", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "CHUTE_MAX_UPLOAD_BYTES" in lines[0]
    assert not (tmp_path / "var").exists()


def test_a_database_that_does_not_answer_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "CHUTE_DATABASE_URL": "postgresql+psycopg://nobody:secret@127.0.0.1:1/chute",
           "CHUTE_HANDLERS": str(Path(__file__).resolve().parents[2] / "handlers")}
    done = subprocess.run([sys.executable, "-m", "chute.cli", "api"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("chute: CHUTE_DATABASE_URL: cannot use")
    assert "secret" not in lines[0], "the password is never printed"


def test_a_missing_handlers_folder_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CHUTE_HANDLERS": str(tmp_path / "nope")}
    done = subprocess.run([sys.executable, "-m", "chute.cli", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CHUTE_HANDLERS" in lines[0], done.stderr
