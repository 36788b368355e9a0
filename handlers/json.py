"""JSON and JSON Lines: is it valid, and what is at the top. Named json.py on purpose: Chute imports it
as ``chute_handlers.json``, so the standard ``json`` module imported below is still the real one."""

from __future__ import annotations

import codecs
import json
from typing import Any

from chute import Context, Reject, Upload, handler

#: a JSON document is parsed whole (the standard library cannot stream one); past this, use JSON Lines
MAX_DOCUMENT_BYTES = 128 * 1024 * 1024
#: JSON Lines are read one line at a time; one line may not be longer than this
MAX_LINE_BYTES = 64 * 1024 * 1024
MAX_KEYS = 1000


class _Keys(list[str]):
    """What an object is parsed into: only its keys, so nested values are dropped as soon as they are read."""


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _number(text: str) -> int:
    return 0  # only the type matters; this also spares converting a 10,000-digit integer


DECODER = json.JSONDecoder(object_pairs_hook=lambda pairs: _Keys(k for k, _ in pairs), parse_constant=_constant,
                           parse_int=_number, parse_float=_number)


def type_name(value: object) -> str:
    if isinstance(value, _Keys):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number" if isinstance(value, int | float) else "string"


def where(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg} at line {exc.lineno}, column {exc.colno} (char {exc.pos})"


def decode(data: bytes) -> str:
    """UTF-8 (a BOM is allowed), UTF-16 or UTF-32, as RFC 8259 and ``json.loads`` accept them."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    encoding = json.detect_encoding(data)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise Reject(f"not valid JSON: not {encoding} text at byte {exc.start}") from None


@handler(["application/json"], extensions=[".json"])
def json_info(upload: Upload, ctx: Context) -> dict[str, object]:
    """Says whether a JSON document is valid (where it breaks if not) and what its top level holds."""
    if upload.size > MAX_DOCUMENT_BYTES:
        raise Reject(f"a JSON document over {MAX_DOCUMENT_BYTES} bytes is not parsed here; send it as JSON Lines")
    with upload.open("rb") as f:
        text = decode(f.read())
    try:
        value = DECODER.decode(text)
    except json.JSONDecodeError as exc:
        hint = " (JSON Lines? name the file .jsonl)" if exc.msg == "Extra data" else ""
        raise Reject(f"not valid JSON: {where(exc)}{hint}") from None
    except ValueError as exc:  # NaN or Infinity, which Python accepts and JSON does not
        raise Reject(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise Reject("not parsed: the JSON is nested too deeply") from None
    result: dict[str, object] = {"type": type_name(value)}
    if isinstance(value, _Keys):
        keys = sorted(set(value))
        result.update(keys=keys[:MAX_KEYS], key_count=len(keys), keys_truncated=len(keys) > MAX_KEYS)
    elif isinstance(value, list):
        result["length"] = len(value)
    return result


@handler(["application/jsonl", "application/x-ndjson"], extensions=[".jsonl", ".ndjson"])
def jsonl_info(upload: Upload, ctx: Context) -> dict[str, object]:
    """Checks JSON Lines one line at a time (any size, little memory): records, blank lines, record types."""
    records = blank = 0
    types: dict[str, int] = {}
    with upload.open("rb") as f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(line) > MAX_LINE_BYTES:
                raise Reject(f"line {number} is longer than {MAX_LINE_BYTES} bytes")
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            if not line.strip():
                blank += 1
                continue
            try:
                value = DECODER.decode(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise Reject(f"line {number} is not UTF-8 (byte {exc.start} of the line)") from None
            except json.JSONDecodeError as exc:
                raise Reject(f"line {number} is not valid JSON: {exc.msg} at column {exc.colno}") from None
            except ValueError as exc:
                raise Reject(f"line {number} is not valid JSON: {exc}") from None
            except RecursionError:
                raise Reject(f"line {number} is nested too deeply") from None
            records += 1
            kind = type_name(value)
            types[kind] = types.get(kind, 0) + 1
    return {"records": records, "blank_lines": blank, "types": dict(sorted(types.items()))}
