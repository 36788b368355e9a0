"""handlers/csv.py on real files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from chute import Reject
from chute.testing import run_handler


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def test_rows_columns_and_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.csv", [["name", "age"], ["ada", "36"], ["alan", "41"], ["grace", "85"]])
    result = run_handler("csv_stats", path)
    assert result == {"rows": 3, "columns": 2, "header": ["name", "age"], "delimiter": ",",
                      "column_types": ["string", "integer"], "encoding": "utf-8"}


def test_semicolons_are_detected(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "eu.csv", [["a", "b", "c"], ["1,5", "2", "3"]], delimiter=";")
    result = run_handler("csv_stats", path)
    assert result["delimiter"] == ";" and result["columns"] == 3 and result["rows"] == 1


def test_tabs_are_detected(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", [["a", "b"], ["x y", "1"], ["z", "2"]], delimiter="\t")
    assert run_handler("csv_stats", path)["delimiter"] == "\t"


def test_quoted_newlines_stay_in_one_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", [["id", "note"], ["1", "line one\nline two"], ["2", "x"]])
    assert run_handler("csv_stats", path)["rows"] == 2


def test_an_empty_file_has_no_rows() -> None:
    assert run_handler("csv_stats", b"", "empty.csv")["rows"] == 0


def test_a_field_past_the_csv_field_limit_is_rejected_not_retried() -> None:
    with pytest.raises(Reject, match="line 2"):
        run_handler("csv_stats", b'a,b\n1,"' + b"x" * 200_000 + b'"\n', "bad.csv")


def test_each_column_gets_the_narrowest_type_all_its_values_fit(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "typed.csv", [
        ["int", "float", "bool", "date", "text", "blank", "bad_date"],
        ["1", "1.5", "true", "2024-01-31", "a", "", "2024-02-30"],
        ["-22", "3", "No", "1999-12-01", "7", "  ", "2024-01-01"],
        ["+3", "-1e3", "FALSE", "2000-02-29", "2024-01-01", "", "2024-01-02"],
    ])
    assert run_handler("csv_stats", path)["column_types"] == [
        "integer", "float", "boolean", "date", "string", "empty", "string"]


def test_empty_cells_do_not_widen_a_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "gaps.csv", [["n", "d"], ["", "2024-05-01"], ["4", ""], ["", ""]])
    assert run_handler("csv_stats", path)["column_types"] == ["integer", "date"]


def test_an_integer_column_widens_to_float_not_string(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "n.csv", [["n"], ["1"], ["2"], ["2.5"], ["3"]])
    assert run_handler("csv_stats", path)["column_types"] == ["float"]


def test_values_past_the_header_width_count_as_columns_and_get_types(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ragged.csv", [["a"], ["x", "1"], ["y", "2", "true"]])
    result = run_handler("csv_stats", path)
    assert result["columns"] == 3 and result["column_types"] == ["string", "integer", "boolean"]


def test_a_utf8_bom_is_detected_and_kept_out_of_the_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bom.csv", [["name", "n"], ["é", "1"]], encoding="utf-8-sig")
    result = run_handler("csv_stats", path)
    assert result["encoding"] == "utf-8-sig" and result["header"] == ["name", "n"]


def test_utf16_is_detected_by_its_bom(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "wide.csv", [["naïve", "n"], ["ü", "1"], ["ß", "2"]], encoding="utf-16")
    result = run_handler("csv_stats", path)
    assert result["encoding"] == "utf-16"
    assert result["header"] == ["naïve", "n"] and result["rows"] == 2
    assert result["column_types"] == ["string", "integer"]


def test_bytes_that_are_not_utf8_fall_back_to_cp1252(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "legacy.csv", [["city", "price"], ["Zürich", "5€"]], encoding="cp1252")
    result = run_handler("csv_stats", path)
    assert result["encoding"] == "cp1252" and result["rows"] == 1


def test_a_non_utf8_byte_past_the_sniffed_sample_still_falls_back_to_cp1252(tmp_path: Path) -> None:
    rows = [["id", "name"]] + [[str(i), "plain"] for i in range(20_000)] + [["20000", "café"]]
    path = write_csv(tmp_path / "late.csv", rows, encoding="cp1252")
    assert path.stat().st_size > 2 * 64 * 1024
    result = run_handler("csv_stats", path)
    assert result["encoding"] == "cp1252" and result["rows"] == 20_001


def test_a_file_of_tens_of_megabytes_is_counted_to_the_last_row(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    line = "2024-06-01,{},0.25,true," + "x" * 60 + "\n"
    with path.open("w", newline="") as f:
        f.write("day,id,ratio,ok,note\n")
        for start in range(0, 300_000, 10_000):
            f.write("".join(line.format(i) for i in range(start, start + 10_000)))
    assert path.stat().st_size > 25 * 1024 * 1024
    result = run_handler("csv_stats", path)
    assert result["rows"] == 300_000
    assert result["column_types"] == ["date", "integer", "float", "boolean", "string"]
