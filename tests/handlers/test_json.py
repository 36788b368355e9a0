"""handlers/json.py on real JSON and JSON Lines files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chute import Reject
from chute.registry import load_handlers
from chute.testing import run_handler

HANDLERS = Path(__file__).resolve().parents[2] / "handlers"


def write_json(path: Path, value: object, **dump: object) -> Path:
    path.write_text(json.dumps(value, **dump), encoding="utf-8")  # type: ignore[arg-type]
    return path


def write_jsonl(path: Path, records: list[object]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def test_an_object_reports_its_sorted_keys(tmp_path: Path) -> None:
    path = write_json(tmp_path / "o.json", {"zeta": 1, "alpha": {"nested": [1, 2]}, "mid": None}, indent=2)
    assert run_handler("json_info", path) == {"type": "object", "keys": ["alpha", "mid", "zeta"], "key_count": 3,
                                              "keys_truncated": False}


def test_an_array_reports_its_length(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", [{"id": i} for i in range(5)])
    assert run_handler("json_info", path) == {"type": "array", "length": 5}


@pytest.mark.parametrize(("value", "kind"), [("hi", "string"), (3, "number"), (2.5, "number"), (True, "boolean"),
                                             (None, "null")])
def test_a_scalar_document_reports_its_type(tmp_path: Path, value: object, kind: str) -> None:
    assert run_handler("json_info", write_json(tmp_path / "s.json", value)) == {"type": kind}


def test_the_key_list_is_capped_and_says_so(tmp_path: Path) -> None:
    path = write_json(tmp_path / "wide.json", {f"k{i:05}": i for i in range(2500)})
    result = run_handler("json_info", path)
    assert len(result["keys"]) == 1000 and result["keys"][0] == "k00000"
    assert result["key_count"] == 2500 and result["keys_truncated"] is True


def test_invalid_json_is_rejected_with_line_column_and_char(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "a": 1,\n  "b": tru\n}\n')
    with pytest.raises(Reject, match=r"line 3, column 8 \(char 19\)"):
        run_handler("json_info", path)


def test_an_empty_file_is_not_valid_json() -> None:
    with pytest.raises(Reject, match="line 1, column 1"):
        run_handler("json_info", b"", "empty.json")


def test_nan_is_rejected_though_python_would_accept_it() -> None:
    with pytest.raises(Reject, match="NaN"):
        run_handler("json_info", b'{"x": NaN}', "nan.json")


def test_json_lines_sent_as_json_are_rejected_with_a_hint() -> None:
    with pytest.raises(Reject, match=r"Extra data at line 2, column 1.*\.jsonl"):
        run_handler("json_info", b'{"a": 1}\n{"a": 2}\n', "lines.json")


def test_a_deeply_nested_document_is_rejected_not_retried() -> None:
    with pytest.raises(Reject, match="nested too deeply"):
        run_handler("json_info", b"[" * 200_000 + b"]" * 200_000, "deep.json")


def test_a_document_over_the_size_limit_is_rejected_with_a_pointer_to_json_lines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    json_info = load_handlers(HANDLERS).get("json_info").func  # type: ignore[union-attr]
    monkeypatch.setitem(json_info.__globals__, "MAX_DOCUMENT_BYTES", 10)
    with pytest.raises(Reject, match=r"over 10 bytes .* JSON Lines"):
        run_handler(json_info, b'{"a": "twelve bytes"}', "big.json")


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_text('{"a": 1}', encoding="utf-8-sig")
    assert run_handler("json_info", path)["keys"] == ["a"]


def test_a_utf16_document_is_read() -> None:
    assert run_handler("json_info", '{"clé": [1, 2]}'.encode("utf-16"), "wide.json")["keys"] == ["clé"]


def test_a_document_that_is_not_utf8_is_rejected_with_the_byte_offset() -> None:
    with pytest.raises(Reject, match="not utf-8 text at byte 10"):
        run_handler("json_info", b'{"a": "caf\xe9"}', "latin.json")


def test_a_number_too_long_for_python_to_convert_is_still_valid_json() -> None:
    assert run_handler("json_info", b"[" + b"9" * 20_000 + b"]", "huge-number.json") == {"type": "array", "length": 1}


def test_json_lines_count_their_records_and_blank_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": i} for i in range(3)] + [[1, 2]])
    with path.open("a") as f:
        f.write("\n")
    assert run_handler("jsonl_info", path) == {"records": 4, "blank_lines": 1, "types": {"array": 1, "object": 3}}


def test_the_first_bad_json_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ok": 1}\n{"ok": 2}\n{"ok": \n{"bad": ]}\n')
    with pytest.raises(Reject, match=r"^line 3 is not valid JSON"):
        run_handler("jsonl_info", path)


def test_a_json_lines_line_that_is_not_utf8_is_named() -> None:
    with pytest.raises(Reject, match=r"^line 2 is not UTF-8"):
        run_handler("jsonl_info", b'{"a": 1}\n"caf\xe9"\n', "latin.jsonl")


def test_ndjson_is_the_same_handler() -> None:
    assert run_handler("jsonl_info", b"1\n2\n", "n.ndjson")["records"] == 2


def test_a_large_json_lines_file_is_read_to_the_end(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = json.dumps({"id": 0, "name": "x" * 200}) + "\n"
    with path.open("w") as f:
        for _ in range(100):
            f.write(line * 1000)
    assert run_handler("jsonl_info", path)["records"] == 100_000
