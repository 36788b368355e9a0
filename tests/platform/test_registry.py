"""The loader collects @handler functions from files; routing picks the most specific match."""

from __future__ import annotations

import csv
import importlib.machinery
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from chute import handler, retry
from chute.errors import HandlerConflict, HandlerImportError, RegistryError
from chute.registry import Registry, load_handlers, spec_of
from chute.retry import DEFAULT_POLICY

ROOT = Path(__file__).resolve().parents[2]


def write(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(dedent(body))


def test_the_project_handlers_load_without_shadowing_the_standard_csv_module() -> None:
    registry = load_handlers(ROOT / "handlers")
    assert {"csv_stats", "text_stats"} <= set(registry.by_name)
    assert registry.get("csv_stats").func.__module__ == "chute_handlers.csv"  # type: ignore[union-attr]
    assert sys.modules["csv"] is csv, "the standard module is still the one imported as csv"
    # where a fresh ``import csv`` would look now (sys.modules aside): the standard library, not handlers/
    fresh = importlib.machinery.PathFinder.find_spec("csv")
    assert fresh is not None and fresh.origin == csv.__file__
    assert (ROOT / "handlers").resolve() not in {Path(p or ".").resolve() for p in sys.path}


def test_two_handlers_claiming_one_type_stop_start_up_naming_both(tmp_path: Path) -> None:
    write(tmp_path, "one.py", """
        from chute import handler
        @handler("text/csv")
        def first(upload, ctx): return {}
    """)
    write(tmp_path, "two.py", """
        from chute import handler
        @handler("text/csv")
        def second(upload, ctx): return {}
    """)
    with pytest.raises(HandlerConflict) as caught:
        load_handlers(tmp_path)
    assert "chute_handlers.one.first" in str(caught.value)
    assert "chute_handlers.two.second" in str(caught.value)


def test_a_module_that_fails_to_import_is_named(tmp_path: Path) -> None:
    write(tmp_path, "broken.py", "import not_a_module_anywhere\n")
    with pytest.raises(HandlerImportError, match=r"broken\.py"):
        load_handlers(tmp_path)


def test_helpers_and_tests_beside_handlers_are_not_loaded(tmp_path: Path) -> None:
    write(tmp_path, "_helpers.py", "raise RuntimeError('not a handler module')\n")
    write(tmp_path, "test_thing.py", "raise RuntimeError('not a handler module')\n")
    write(tmp_path, "ok.py", """
        from chute import handler
        @handler("text/plain")
        def ok(upload, ctx): return {}
    """)
    assert list(load_handlers(tmp_path).by_name) == ["ok"]


def test_a_missing_handlers_path_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="CHUTE_HANDLERS"):
        load_handlers(tmp_path / "nope")


def _spec(types: str, name: str) -> object:
    def func(upload: object, ctx: object) -> dict[str, str]:
        return {"name": name}

    func.__name__ = name
    return spec_of(handler(types)(func))


def test_the_most_specific_pattern_wins() -> None:
    registry = Registry([_spec("*/*", "anything"), _spec("text/*", "any_text"),  # type: ignore[list-item]
                         _spec("text/csv", "csv")])  # type: ignore[list-item]
    assert registry.route("text/csv").name == "csv"  # type: ignore[union-attr]
    assert registry.route("text/plain").name == "any_text"  # type: ignore[union-attr]
    assert registry.route("image/png").name == "anything"  # type: ignore[union-attr]


def test_no_match_is_none_and_accepted_lists_types() -> None:
    registry = Registry([_spec("text/csv", "csv")])  # type: ignore[list-item]
    assert registry.route("image/png") is None
    assert registry.accepted() == ["text/csv"]


@pytest.mark.parametrize("bad", ["csv", "text/", "*/csv", "TEXT CSV"])
def test_a_malformed_type_is_refused_at_decoration(bad: str) -> None:
    with pytest.raises(RegistryError):
        handler(bad)


def test_retry_works_above_or_below_handler_and_the_function_stays_callable() -> None:
    @handler("text/plain")
    @retry(attempts=5, backoff=1.0)
    def below(upload: object, ctx: object) -> int:
        return 1

    @retry(attempts=2)
    @handler("text/plain")
    def above(upload: object, ctx: object) -> int:
        return 2

    @handler("text/plain", timeout=7, name="custom")
    def plain(upload: object, ctx: object) -> int:
        return 3

    assert spec_of(below).retry.attempts == 5
    assert spec_of(above).retry.attempts == 2
    assert spec_of(plain).retry is DEFAULT_POLICY
    assert spec_of(plain).name == "custom" and spec_of(plain).timeout == 7
    assert below(None, None) == 1 and above(None, None) == 2


def test_async_handlers_are_recognised() -> None:
    @handler("text/plain")
    async def slow(upload: object, ctx: object) -> int:
        return 1

    assert spec_of(slow).is_async


def test_a_format_without_a_handler_goes_to_its_containers() -> None:
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    containers = {docx: "application/zip"}
    zip_only = Registry([_spec("application/zip", "zip")])  # type: ignore[list-item]
    assert zip_only.route(docx, containers).name == "zip"  # type: ignore[union-attr]
    with_catch_all = Registry([_spec("application/zip", "zip"), _spec("*/*", "anything")])  # type: ignore[list-item]
    assert with_catch_all.route(docx, containers).name == "zip"  # type: ignore[union-attr]
    own = Registry([_spec("application/zip", "zip"), _spec(docx, "word")])  # type: ignore[list-item]
    assert own.route(docx, containers).name == "word"  # type: ignore[union-attr]
    assert Registry([]).route(docx, containers) is None
