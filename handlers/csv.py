"""CSV: rows, columns, header, delimiter, encoding and each column's type, read as a stream.

Named csv.py on purpose: Chute imports it as ``chute_handlers.csv``, so the standard ``csv`` module
imported below is still the real one."""

from __future__ import annotations

import codecs
import csv
import re
from datetime import date

from chute import Context, Reject, Upload, handler

SNIFF_CHARS = 64 * 1024
DELIMITERS = ",;\t|"
BOMS = [(codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]
BOOLEANS = {"true", "false", "yes", "no"}
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def is_date(value: str) -> bool:
    """An ISO calendar date (YYYY-MM-DD) that exists."""
    if not _DATE.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


FITS = {
    "integer": lambda v: _INTEGER.fullmatch(v) is not None,
    "float": lambda v: _FLOAT.fullmatch(v) is not None,
    "boolean": lambda v: v.lower() in BOOLEANS,
    "date": is_date,
}
#: where a column goes when a value does not fit its type: integer → float → string; the rest → string
WIDER = {"empty": ["integer", "float", "boolean", "date"], "integer": ["float"]}


def widen(current: str, value: str) -> str:
    """The narrowest type, at or above ``current``, that ``value`` fits."""
    return next((t for t in WIDER.get(current, []) if FITS[t](value)), "string")


def encodings(upload: Upload) -> list[tuple[str, str]]:
    """(encoding, errors) to try in order: the BOM's, else strict UTF-8 and then cp1252."""
    with upload.open("rb") as f:
        head = f.read(4)
    for bom, name in BOMS:
        if head.startswith(bom):
            return [(name, "replace")]
    return [("utf-8", "strict"), ("cp1252", "replace")]


def scan(upload: Upload, encoding: str, errors: str) -> dict[str, object]:
    """One streaming pass; raises UnicodeDecodeError when ``encoding`` turns out to be wrong."""
    with upload.open("rt", encoding=encoding, errors=errors, newline="") as f:
        sample = f.read(SNIFF_CHARS)
        if not sample.strip():
            return {"rows": 0, "columns": 0, "header": [], "delimiter": ",", "column_types": []}
        try:
            dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=DELIMITERS)
        except csv.Error:
            dialect = csv.excel
        f.seek(0)
        reader = csv.reader(f, dialect)
        try:
            header = next(reader)
            types = ["empty"] * len(header)
            rows = 0
            for row in reader:
                if not row:
                    continue
                rows += 1
                if len(row) > len(types):
                    types.extend(["empty"] * (len(row) - len(types)))
                for i, raw in enumerate(row):
                    if types[i] == "string":
                        continue
                    value = raw.strip()
                    if value and (types[i] == "empty" or not FITS[types[i]](value)):
                        types[i] = widen(types[i], value)
        except csv.Error as exc:
            raise Reject(f"not valid CSV at line {reader.line_num}: {exc}") from None
    return {"rows": rows, "columns": len(types), "header": header, "delimiter": dialect.delimiter,
            "column_types": types}


@handler("text/csv", extensions=[".csv"])
def csv_stats(upload: Upload, ctx: Context) -> dict[str, object]:
    """Streams the rows (a 1 GB file needs no more memory than a small one) and infers each column's type."""
    *strict, (encoding, errors) = encodings(upload)
    for candidate, strict_errors in strict:
        try:
            return {**scan(upload, candidate, strict_errors), "encoding": candidate}
        except UnicodeDecodeError:
            ctx.log.info("not %s, reading it as %s", candidate, encoding)
    return {**scan(upload, encoding, errors), "encoding": encoding}
