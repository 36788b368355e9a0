"""handlers/text.py on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from chute.registry import Registry, load_handlers
from chute.testing import run_handler


def test_counts_lines_words_and_characters() -> None:
    result = run_handler("text_stats", b"one two\nthree\n\nfour five six", "notes.txt")
    assert result == {"lines": 4, "words": 6, "characters": 28, "encoding": "utf-8"}


def test_detects_utf16_and_cp1252(tmp_path: Path) -> None:
    utf16 = tmp_path / "u16.txt"
    utf16.write_bytes("héllo wörld\n".encode("utf-16"))
    assert run_handler("text_stats", utf16) == {"lines": 1, "words": 2, "characters": 12, "encoding": "utf-16"}
    legacy = run_handler("text_stats", "café\n".encode("cp1252"), "old.txt")
    assert legacy["encoding"] == "cp1252" and legacy["characters"] == 5


def test_an_empty_file_is_all_zeros() -> None:
    assert run_handler("text_stats", b"", "empty.txt") == {"lines": 0, "words": 0, "characters": 0,
                                                           "encoding": "utf-8"}


def test_a_word_split_across_read_chunks_counts_once(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    word = "x" * (3 * 1024 * 1024)  # longer than one read
    big.write_text(f"{word} end\n")
    assert run_handler("text_stats", big)["words"] == 2


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_handlers(Path(__file__).resolve().parents[2] / "handlers")


@pytest.mark.parametrize("mime", ["text/x-org", "text/tab-separated-values", "text/x-rst"])
def test_text_types_without_a_handler_of_their_own_fall_back_to_text_stats(registry: Registry, mime: str) -> None:
    assert registry.route(mime).name == "text_stats"  # type: ignore[union-attr]


def test_csv_still_goes_to_its_own_more_specific_handler(registry: Registry) -> None:
    assert registry.route("text/csv").name == "csv_stats"  # type: ignore[union-attr]


def test_a_markdown_file_is_counted_like_plain_text() -> None:
    assert run_handler("text_stats", b"# Title\n\nSome *words* here.\n", "readme.md")["words"] == 5
