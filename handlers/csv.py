"""CSV: rows, columns and the header. Named csv.py on purpose: Chute imports it as
``chute_handlers.csv``, so the standard ``csv`` module imported below is still the real one."""

from __future__ import annotations

import csv

from chute import Context, Reject, Upload, handler

SNIFF_BYTES = 64 * 1024


@handler("text/csv", extensions=[".csv"])
def csv_stats(upload: Upload, ctx: Context) -> dict[str, object]:
    """Streams the rows, so a 1 GB file needs no more memory than a small one."""
    with upload.open("rt", encoding="utf-8-sig", errors="replace", newline="") as f:
        sample = f.read(SNIFF_BYTES)
        if not sample.strip():
            return {"rows": 0, "columns": 0, "header": [], "delimiter": ","}
        try:
            dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        f.seek(0)
        reader = csv.reader(f, dialect)
        try:
            header = next(reader)
            rows = columns = 0
            columns = len(header)
            for row in reader:
                if row:
                    rows += 1
                    columns = max(columns, len(row))
        except csv.Error as exc:
            raise Reject(f"not valid CSV at line {reader.line_num}: {exc}") from None
    return {"rows": rows, "columns": columns, "header": header, "delimiter": dialect.delimiter}
