"""`chute preview-email`: an operator sees an edited template rendered before a real job uses it."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chute.cli import app


@pytest.fixture
def run(templates_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CHUTE_TEMPLATES", str(templates_dir))
    monkeypatch.setenv("CHUTE_MAIL_FROM", "Chute <chute@example.com>")

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(app, ["preview-email", *args], catch_exceptions=False)

    return invoke


def test_it_shows_the_headers_and_both_parts_with_sample_data(run: Any) -> None:
    result = run("--event", "processed")
    assert result.exit_code == 0, result.output
    assert "Subject: [Chute] sales-2026-q3.csv is processed" in result.output
    assert "--- text/plain ---" in result.output and "--- text/html ---" in result.output
    assert '"rows": 1284' in result.output


def test_it_uses_a_handlers_override(run: Any, templates_dir: Path) -> None:
    (templates_dir / "csv_stats").mkdir()
    (templates_dir / "csv_stats" / "failed.subject.j2").write_text("CSV trouble: {{ job.filename }}")
    result = run("--event", "failed", "--handler", "csv_stats")
    assert result.exit_code == 0, result.output
    assert "Subject: CSV trouble: sales-2026-q3.csv" in result.output
    assert str(templates_dir / "csv_stats" / "failed.subject.j2") in result.output


def test_a_broken_template_is_reported_with_its_name(run: Any, templates_dir: Path) -> None:
    (templates_dir / "processed.txt.j2").write_text("{{ job.nope }}")
    result = CliRunner().invoke(app, ["preview-email"])
    assert result.exit_code == 1
    assert "processed.txt.j2" in result.output and "nope" in result.output


def test_it_can_write_the_message_as_an_eml_file(run: Any, tmp_path: Path) -> None:
    target = tmp_path / "preview.eml"
    assert run("--event", "failed", "--eml", str(target)).exit_code == 0
    message = email.message_from_bytes(target.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "[Chute] sales-2026-q3.csv failed after 3 attempts"
    assert not message.defects


def test_an_unknown_event_is_refused(run: Any) -> None:
    result = CliRunner().invoke(app, ["preview-email", "--event", "retrying"])
    assert result.exit_code == 2 and "processed, failed" in result.output
