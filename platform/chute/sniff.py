"""A file's type from its first bytes, cross-checked with its extension and the declared Content-Type.

Magic numbers decide for binary formats (a ``.csv`` that is a PNG is a PNG). Text has no magic,
so within text the extension, then the declared type, then the content's shape decide."""

from __future__ import annotations

import codecs
import json
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import filetype

from chute.storage import extension_of

GENERIC = {"application/octet-stream", "text/plain", "binary/octet-stream", ""}
TEXT_APPLICATION = {
    "application/json", "application/jsonl", "application/x-ndjson", "application/xml", "application/csv",
    "application/javascript", "application/x-yaml", "application/yaml", "application/toml", "application/sql",
}
_TYPES = mimetypes.MimeTypes(filenames=())  # Python's own table: the same on every machine
for _ext, _mime in {".jsonl": "application/jsonl", ".ndjson": "application/x-ndjson", ".md": "text/markdown",
                    ".yaml": "application/yaml", ".yml": "application/yaml", ".toml": "application/toml",
                    ".tsv": "text/tab-separated-values", ".webp": "image/webp"}.items():
    _TYPES.add_type(_mime, _ext)


def is_textual(mime: str) -> bool:
    return mime.startswith("text/") or mime in TEXT_APPLICATION or mime.endswith(("+json", "+xml"))


def type_of_extension(ext: str) -> str | None:
    return _TYPES.types_map[1].get(ext) or _TYPES.types_map[0].get(ext) if ext else None


def looks_like_text(head: bytes) -> bool:
    """No NUL bytes and valid UTF-8 (a multi-byte character cut at the end is fine), or a UTF-16 BOM."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return True
    except UnicodeDecodeError:
        pass
    # Legacy 8-bit text (latin-1, cp1252): few control characters besides whitespace.
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return controls <= len(head) // 100


def _shape(head: bytes) -> str | None:
    """JSON by its first character; JSON Lines when the first line is a whole value and another follows."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] not in (b"{", b"["):
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) >= 2 and lines[1].lstrip()[:1] in (b"{", b"[") and _one_value(lines[0]):
        return "application/jsonl"
    return "application/json"


#: deeper than this, a line's nesting is checked by the bracket scan alone, never by ``json.loads``
#: (whose scanner recurses once per level: 3,000 ``[`` are a RecursionError, not a ValueError)
SHALLOW = 32
#: a whole string (possessive: no backtracking), a bracket, or a quote that opens no whole string
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*+"|[\[\]{}]|"')
_PAIRS = {ord("]"): ord("["), ord("}"): ord("{")}


def _one_value(line: bytes) -> bool:
    """Whether ``line`` is one whole JSON value, found without recursing on the client's bytes (and in
    linear time): its brackets outside strings must pair up and close exactly at the end of the line."""
    stripped = line.strip()
    if stripped[-1:] not in (b"]", b"}"):
        return False
    stack = bytearray()
    deepest = 0
    for token in _TOKENS.finditer(stripped):
        b = stripped[token.start()]
        if b == 0x22:  # '"'
            if token.end() - token.start() == 1:
                return False  # a string that never ends
            continue
        if b in _PAIRS:
            if not stack or stack.pop() != _PAIRS[b]:
                return False
            if not stack and token.end() != len(stripped):
                return False  # the first value ends before the line does
        else:
            stack.append(b)
            deepest = max(deepest, len(stack))
    if stack:
        return False
    if deepest > SHALLOW:
        return True
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True


#: formats built on another: with no handler of their own they go to their container's (a .docx is a ZIP)
CONTAINERS = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "application/zip",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "application/zip",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "application/zip",
    "application/vnd.oasis.opendocument.text": "application/zip",
    "application/vnd.oasis.opendocument.spreadsheet": "application/zip",
    "application/vnd.oasis.opendocument.presentation": "application/zip",
    "application/epub+zip": "application/zip",
    "application/java-archive": "application/zip",
    "application/vnd.android.package-archive": "application/zip",
    "image/apng": "image/png",
}


@dataclass(frozen=True)
class Detected:
    """The type Chute routes by, and the evidence beside it (stored on the job as ``type_info``)."""

    mime: str
    sniffed: str | None
    declared: str | None
    extension: str | None
    text: bool

    @property
    def mismatch(self) -> bool:
        others = [t for t in (self.extension, self.declared) if t and t not in GENERIC]
        return any(t != self.mime for t in others)

    def info(self) -> dict[str, Any]:
        return {"detected": self.mime, "sniffed": self.sniffed, "declared": self.declared,
                "extension": self.extension, "mismatch": self.mismatch}


def detect(head: bytes, filename: str, declared: str | None,
           claimed_extensions: Mapping[str, str] | None = None) -> Detected:
    """``claimed_extensions`` maps an extension to the type its handler declares (``.csv`` → text/csv)."""
    declared = (declared or "").split(";")[0].strip().lower() or None
    ext = extension_of(filename)
    by_ext = type_of_extension(ext)
    claimed = (claimed_extensions or {}).get(ext)
    magic = filetype.guess_mime(head) if head else None
    if magic:
        return Detected(magic, magic, declared, by_ext, False)
    if looks_like_text(head):
        candidates = [claimed, by_ext, declared if declared not in GENERIC else None]
        mime = next((c for c in candidates if c and is_textual(c) and "*" not in c), None)
        mime = mime or _shape(head) or "text/plain"  # the content's shape only when nothing else said
        return Detected(mime, "text/plain", declared, by_ext or claimed, True)
    # Binary without known magic: trust the extension, then the client, before giving up.
    candidates = [claimed, by_ext, declared]
    mime = next((c for c in candidates if c and not is_textual(c) and "*" not in c), "application/octet-stream")
    return Detected(mime, None, declared, by_ext or claimed, False)
