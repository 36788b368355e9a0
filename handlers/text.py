"""Plain text (and any other ``text/*`` without a handler of its own): lines, words, characters, encoding."""

from __future__ import annotations

import codecs

from chute import Context, Upload, handler

CHUNK = 1024 * 1024
BOMS = [(codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def detect_encoding(upload: Upload) -> str:
    """UTF-8 (with or without BOM) or UTF-16 by BOM; anything else that is not UTF-8 is read as cp1252."""
    with upload.open("rb") as f:
        head = f.read(4)
        for bom, name in BOMS:
            if head.startswith(bom):
                return name
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            while chunk := f.read(CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "cp1252"
    return "utf-8"


@handler(["text/plain", "text/*"], extensions=[".txt"])
def text_stats(upload: Upload, ctx: Context) -> dict[str, object]:
    """Counts lines, words and characters, streaming, so a large file costs no memory.

    Also the fallback for any text type no other handler claims (Markdown, TSV, ...)."""
    encoding = detect_encoding(upload)
    lines = words = chars = 0
    last = ""
    in_word = False
    with upload.open("rt", encoding=encoding, errors="replace", newline="") as f:
        while chunk := f.read(CHUNK):
            chars += len(chunk)
            lines += chunk.count("\n")
            for ch in chunk:  # word boundaries can fall across chunks
                if ch.isspace():
                    in_word = False
                elif not in_word:
                    in_word = True
                    words += 1
            last = chunk[-1]
    if chars and last != "\n":
        lines += 1  # a last line without a newline is still a line
    ctx.log.info("counted %d lines", lines)
    return {"lines": lines, "words": words, "characters": chars, "encoding": encoding}
