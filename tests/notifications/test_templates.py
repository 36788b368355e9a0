"""The Jinja2 templates: HTML escaped (and only HTML), a typo is an error, a handler folder overrides
file by file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chute.errors import ConfigError
from chute.notify.preview import sample_context
from chute.notify.templates import TemplateProblem, Templates, duration, filesize, when

ROOT = Path(__file__).resolve().parents[2]


def context(**job: Any) -> dict[str, Any]:
    ctx = sample_context("processed", None, "https://chute.example.com", "ann@example.com")
    ctx["job"].update(job)
    return ctx


def test_the_projects_templates_are_all_there() -> None:
    Templates(ROOT / "notifications" / "templates").check()


def test_a_missing_template_folder_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CHUTE_TEMPLATES"):
        Templates(tmp_path / "nowhere").check()


@pytest.mark.parametrize("event", ["processed", "failed"])
def test_each_event_renders_every_field_the_email_promises(templates_dir: Path, event: str) -> None:
    ctx = sample_context(event, "csv_stats", "https://chute.example.com", "ann@example.com")
    rendered = Templates(templates_dir).render(event, "csv_stats", ctx)
    job = ctx["job"]
    for part in (rendered.text, rendered.html):
        for shown in (job["filename"], job["content_type"], "47.1 KiB", job["sha256"], job["handler"], event,
                      f"{job['attempts']} of {job['max_attempts']}", "3.4 s", job["url"]):
            assert shown in part, (shown, part)
    if event == "processed":
        assert '"rows": 1284' in rendered.text and "&#34;rows&#34;: 1284" in rendered.html
    else:
        assert "Error: line contains NUL" in rendered.text and "line contains NUL" in rendered.html
    assert job["filename"] in rendered.subject


def test_the_html_part_is_escaped(templates_dir: Path) -> None:
    rendered = Templates(templates_dir).render("processed", None, context(filename="<script>alert(1)</script>.txt"))
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.txt" in rendered.html


def test_the_text_part_and_subject_are_not_html_escaped(templates_dir: Path) -> None:
    rendered = Templates(templates_dir).render("processed", None, context(filename="Q&A <draft>.txt"))
    assert "Q&A <draft>.txt" in rendered.text
    assert "Q&A <draft>.txt" in rendered.subject


def test_a_misspelt_variable_is_an_error_naming_the_template(templates_dir: Path) -> None:
    (templates_dir / "processed.subject.j2").write_text("Done: {{ job.filname }}")
    with pytest.raises(TemplateProblem, match=r"processed\.subject\.j2.*filname"):
        Templates(templates_dir).render("processed", None, context())


def test_a_syntax_error_names_the_file_and_line(templates_dir: Path) -> None:
    (templates_dir / "failed.txt.j2").write_text("line one\n{% if %}\n")
    with pytest.raises(TemplateProblem, match=r"failed\.txt\.j2 line 2"):
        Templates(templates_dir).render("failed", None, context())


def test_a_handler_folder_overrides_only_the_files_it_has(templates_dir: Path) -> None:
    (templates_dir / "shout").mkdir()
    (templates_dir / "shout" / "processed.subject.j2").write_text("SHOUTED: {{ job.filename }}")
    templates = Templates(templates_dir)
    own = templates.render("processed", "shout", context())
    shared = templates.render("processed", "other", context())
    assert own.subject == "SHOUTED: sales-2026-q3.csv"
    assert shared.subject == "[Chute] sales-2026-q3.csv is processed"
    assert own.text == shared.text and own.html == shared.html


def test_an_edited_template_is_used_without_a_restart(templates_dir: Path) -> None:
    templates = Templates(templates_dir, recheck=0.0)
    assert templates.render("processed", None, context()).subject.startswith("[Chute]")
    path = templates_dir / "processed.subject.j2"
    path.write_text("Edited {{ job.filename }}")
    import os

    os.utime(path, (path.stat().st_atime + 5, path.stat().st_mtime + 5))  # a newer mtime, as an editor leaves
    assert templates.render("processed", None, context()).subject == "Edited sales-2026-q3.csv"


@pytest.mark.parametrize("handler", ["../etc", ".hidden", "a/b", ""])
def test_a_handler_name_that_is_not_a_plain_folder_name_gets_the_shared_templates(templates_dir: Path,
                                                                                   handler: str) -> None:
    assert Templates(templates_dir).folder_for(handler) is None


def test_filters_read_as_a_person_would_write() -> None:
    assert filesize(0) == "0 bytes"
    assert filesize(1536) == "1.5 KiB"
    assert filesize(5 * 1024**3) == "5.0 GiB"
    assert duration(0.25) == "250 ms"
    assert duration(75) == "1 min 15 s"
    assert duration(7300) == "2 h 1 min"
    assert when("2026-11-29T09:22:15.5+00:00") == "2026-11-29 09:22:15 UTC"
