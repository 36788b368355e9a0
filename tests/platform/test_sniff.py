"""Type detection: bytes decide for binary formats; within text, the extension and the client do."""

from __future__ import annotations

import io

from PIL import Image

from chute.sniff import detect


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_png_named_csv_is_a_png_and_the_mismatch_is_recorded() -> None:
    found = detect(png(), "data.csv", "text/csv")
    assert found.mime == "image/png"
    assert found.info()["mismatch"] is True
    assert found.info()["extension"] == "text/csv"
    assert found.info()["declared"] == "text/csv"


def test_text_named_csv_is_csv() -> None:
    found = detect(b"a,b\n1,2\n", "data.csv", "application/octet-stream")
    assert found.mime == "text/csv"
    assert found.info()["mismatch"] is False


def test_text_without_extension_falls_back_to_the_declared_type_then_the_shape() -> None:
    assert detect(b"a,b\n1,2\n", "data", "text/csv").mime == "text/csv"
    assert detect(b'{"a": 1}', "data", None).mime == "application/json"
    assert detect(b"hello", "data", None).mime == "text/plain"


def test_a_handler_claimed_extension_routes_text() -> None:
    assert detect(b"a\tb\n", "x.tab", None, {".tab": "text/csv"}).mime == "text/csv"


def test_an_empty_file_is_text() -> None:
    assert detect(b"", "empty.csv", None).mime == "text/csv"
    assert detect(b"", "empty", None).mime == "text/plain"


def test_unknown_binary_is_octet_stream() -> None:
    assert detect(bytes(range(256)) * 4, "blob", None).mime == "application/octet-stream"


def test_a_text_extension_cannot_make_binary_text() -> None:
    found = detect(b"\x00\x01\x02\x03" * 100, "notes.txt", "text/plain")
    assert found.mime == "application/octet-stream"


def test_utf16_with_bom_is_text() -> None:
    assert detect("héllo".encode("utf-16"), "x.txt", None).mime == "text/plain"


def test_json_lines_are_told_from_json_by_shape() -> None:
    assert detect(b'{"a": 1}\n{"a": 2}\n', "data", None).mime == "application/jsonl"
    assert detect(b'[1, 2]\n[3]\n', "data", None).mime == "application/jsonl"
    assert detect(b'{\n  "a": 1\n}\n', "data", None).mime == "application/json"
    assert detect(b'{"a": 1}\n', "data", None).mime == "application/json"
