"""``chute new-handler``: what it writes passes ruff and its own tests as written (run in a copy of the
project layout, the way ``make test`` runs them), so does the README's example, and every refusal
leaves both folders as they were."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from chute.cli import app

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The project's layout as a new user has it: pyproject.toml (its ruff and pytest settings), the shipped
    handlers, and an empty tests/handlers."""
    root = tmp_path / "project"
    (root / "handlers").mkdir(parents=True)
    (root / "tests" / "handlers").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "platform").symlink_to(ROOT / "platform")  # ruff's `src`: chute is this project's own package
    for module in (ROOT / "handlers").glob("*.py"):
        shutil.copy(module, root / "handlers" / module.name)
    return root


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUTE_", "PYTEST_"))}
    return {**env, **extra}


def run(cwd: Path, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=300)


def checks_pass(project: Path, *files: str) -> None:
    """What `make test` runs, on the files alone: ruff with the project's config, then pytest."""
    lint = run(project, str(BIN / "ruff"), "check", *files)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    tests = [f for f in files if f.startswith("tests/")]
    result = run(project, str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b2 passed\b", result.stdout), result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("name", "args"), [
    ("markdown_headings", ["--type", "text/markdown", "--ext", ".md"]),
    ("parquet_info", ["--type", "application/vnd.apache.parquet"]),  # binary, no extension: by its declared type
    ("audio_info", ["--type", "audio/*", "--ext", "wav"]),  # a pattern, and an extension without its dot
])
def test_what_it_writes_passes_ruff_and_its_own_tests_as_written(project: Path, name: str, args: list[str]) -> None:
    made = run(project, sys.executable, "-m", "chute.cli", "new-handler", name, *args)
    assert made.returncode == 0, made.stdout + made.stderr
    handler, test = f"handlers/{name}.py", f"tests/handlers/test_{name}.py"
    assert (project / handler).is_file() and (project / test).is_file()
    assert f"wrote {handler}" in made.stdout and f"wrote {test}" in made.stdout
    checks_pass(project, handler, test)


@pytest.mark.slow
def test_the_written_test_fails_when_the_handler_stops_doing_what_it_said(project: Path) -> None:
    """The test it writes is an honest one: break the handler's answer and it fails."""
    made = run(project, sys.executable, "-m", "chute.cli", "new-handler", "notes_info", "--type", "text/x-notes",
               "--ext", ".notes")
    assert made.returncode == 0, made.stdout + made.stderr
    handler = project / "handlers" / "notes_info.py"
    handler.write_text(handler.read_text().replace('"lines": lines', '"lines": lines + 1'))
    result = run(project, str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "tests/handlers/test_notes_info.py")
    assert result.returncode == 1 and "2 failed" in result.stdout, result.stdout


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Add a handler")
    return text[start:text.index("\n## ", start + 1)]


@pytest.mark.slow
def test_the_readme_example_starts_with_the_scaffold_and_passes_as_written(project: Path) -> None:
    blocks = re.findall(r"```(\w+)\n(.*?)```", readme_section(), re.S)
    assert blocks and blocks[0][0] == "sh", "the first example is the scaffold command"
    command = blocks[0][1].strip().splitlines()[0].split("#")[0].split()
    assert command[:2] == ["chute", "new-handler"], command
    made = run(project, sys.executable, "-m", "chute.cli", *command[1:])
    assert made.returncode == 0, made.stdout + made.stderr
    pasted = []
    for language, body in blocks[1:]:
        first = body.splitlines()[0]
        if language == "python" and first.startswith("# ") and first.endswith(".py"):
            path = first[2:].strip()
            (project / path).write_text(body)  # pasted over what the scaffold wrote, exactly as shown
            pasted.append(path)
    assert sorted(pasted) == [f"handlers/{command[2]}.py", f"tests/handlers/test_{command[2]}.py"], pasted
    checks_pass(project, *sorted(pasted))


# --- refusals: in-process, nothing written ----------------------------------------------------------------
@pytest.fixture
def inside(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(project)
    for name in [n for n in os.environ if n.startswith("CHUTE_")]:
        monkeypatch.delenv(name)
    yield project


def new_handler(*args: str) -> Result:
    return CliRunner().invoke(app, ["new-handler", *args], catch_exceptions=False)


def files(project: Path) -> set[str]:
    return {str(p.relative_to(project)) for p in project.rglob("*.py") if "__pycache__" not in p.parts}


def refused(project: Path, *args: str) -> str:
    before = {p: (project / p).read_bytes() for p in files(project)}
    result = new_handler(*args)
    assert result.exit_code == 2, result.output
    assert {p: (project / p).read_bytes() for p in files(project)} == before, "a refusal writes nothing"
    return " ".join(result.output.split())


def test_an_existing_handler_file_is_not_overwritten(inside: Path) -> None:
    (inside / "handlers" / "notes.py").write_text('"""someone\'s work"""\n')
    assert "handlers/notes.py already exists" in refused(inside, "notes", "--type", "text/x-notes")


def test_an_existing_test_file_is_not_overwritten(inside: Path) -> None:
    (inside / "tests" / "handlers" / "test_notes.py").write_text('"""someone\'s work"""\n')
    assert "tests/handlers/test_notes.py already exists" in refused(inside, "notes", "--type", "text/x-notes")


@pytest.mark.parametrize(("name", "why"), [
    ("2fast", "not a Python identifier"), ("my-handler", "not a Python identifier"),
    ("class", "a Python keyword"), ("open", "the built-in"), ("handler", "the module's own"),
    ("_private", "skips"), ("test_csv", "skips"),
])
def test_a_name_that_cannot_be_a_handler_module_and_function_is_refused(inside: Path, name: str, why: str) -> None:
    assert why in refused(inside, name, "--type", "text/x-notes")


def test_a_name_an_existing_handler_uses_is_refused_by_function_name_or_by_name(inside: Path) -> None:
    (inside / "handlers" / "alias.py").write_text(
        "from chute import Context, Upload, handler\n\n\n"
        "@handler('text/x-alias', name='nickname')\n"
        "def real_function(upload: Upload, ctx: Context) -> dict[str, object]:\n    return {}\n")
    assert "csv_stats is already a handler (handlers/csv.py)" in refused(inside, "csv_stats", "--type", "text/x-a")
    assert "nickname is already a handler (handlers/alias.py)" in refused(inside, "nickname", "--type", "text/x-a")
    assert "real_function is already" in refused(inside, "real_function", "--type", "text/x-a")


@pytest.mark.parametrize("mime", ["markdown", "text/", "/markdown", "text/mark down", "*/markdown", "text/md/x"])
def test_a_type_that_is_not_type_slash_subtype_is_refused(inside: Path, mime: str) -> None:
    assert "is not a MIME type" in refused(inside, "notes", "--type", mime)


def test_a_type_another_handler_claims_is_refused_naming_it(inside: Path) -> None:
    said = refused(inside, "tables", "--type", "TEXT/CSV")
    assert "text/csv is claimed by csv_stats (handlers/csv.py)" in said and "would not start" in said
    assert "text/* is claimed by text_stats" in refused(inside, "texts", "--type", "text/*")


def test_an_extension_another_handler_claims_is_refused_naming_it(inside: Path) -> None:
    assert ".csv is claimed by csv_stats" in refused(inside, "tables", "--type", "text/x-tables", "--ext", ".CSV")
    assert "is not a file extension" in refused(inside, "tables", "--type", "text/x-tables", "--ext", ".c s v")


def test_a_handlers_folder_that_does_not_load_is_said_and_nothing_written(inside: Path) -> None:
    (inside / "handlers" / "broken.py").write_text("import a_module_nobody_has\n")
    said = refused(inside, "notes", "--type", "text/x-notes")
    assert "handlers/broken.py" in said and "a_module_nobody_has" in said


def test_chute_handlers_says_where_handlers_live_and_the_test_goes_to_that_projects_tests(
        inside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = inside / "plugins" / "chute"
    plugins.mkdir(parents=True)
    monkeypatch.setenv("CHUTE_HANDLERS", str(plugins))
    result = new_handler("tables", "--type", "text/csv")  # claimed in handlers/, but those are not loaded now
    assert result.exit_code == 0, result.output
    assert (plugins / "tables.py").is_file()
    assert (inside / "tests" / "handlers" / "test_tables.py").is_file(), "beside the project's pyproject.toml"
    assert not (inside / "handlers" / "tables.py").exists()


def test_tests_says_where_the_test_goes(inside: Path) -> None:
    result = new_handler("notes", "--type", "text/x-notes", "--tests", "checks")
    assert result.exit_code == 0, result.output
    assert (inside / "checks" / "test_notes.py").is_file() and (inside / "handlers" / "notes.py").is_file()


def test_a_name_too_long_for_the_projects_line_length_is_refused(inside: Path) -> None:
    assert "too long to write within 120 columns" in refused(inside, "n" * 90, "--type", "text/x-notes")
