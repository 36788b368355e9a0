"""handlers/csv.py on real files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from chute import Reject
from chute.testing import run_handler


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def test_rows_columns_and_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.csv", [["name", "age"], ["ada", "36"], ["alan", "41"], ["grace", "85"]])
    result = run_handler("csv_stats", path)
    assert result == {"rows": 3, "columns": 2, "header": ["name", "age"], "delimiter": ","}


def test_semicolons_are_detected(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "eu.csv", [["a", "b", "c"], ["1,5", "2", "3"]], delimiter=";")
    result = run_handler("csv_stats", path)
    assert result["delimiter"] == ";" and result["columns"] == 3 and result["rows"] == 1


def test_quoted_newlines_stay_in_one_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", [["id", "note"], ["1", "line one\nline two"], ["2", "x"]])
    assert run_handler("csv_stats", path)["rows"] == 2


def test_an_empty_file_has_no_rows() -> None:
    assert run_handler("csv_stats", b"", "empty.csv")["rows"] == 0


def test_a_field_past_the_csv_field_limit_is_rejected_not_retried() -> None:
    with pytest.raises(Reject, match="line 2"):
        run_handler("csv_stats", b'a,b\n1,"' + b"x" * 200_000 + b'"\n', "bad.csv")
