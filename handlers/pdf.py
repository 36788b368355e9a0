"""PDF: pages, title, author, how much text there is, and whether it is encrypted."""

from __future__ import annotations

import struct
import zlib

from pypdf import PdfReader
from pypdf.errors import DependencyError, PyPdfError

from chute import Context, Reject, Upload, handler

#: what pypdf raises on a malformed file, besides its own errors; none of them gets better on a retry
MALFORMED = (PyPdfError, ValueError, KeyError, TypeError, IndexError, AttributeError, AssertionError,
             RecursionError, struct.error, zlib.error)
#: an encrypted PDF we cannot open: pypdf reads no object of it (not even the page tree) without the key
LOCKED = {"encrypted": True, "decrypted": False, "pages": None, "title": None, "author": None,
          "text_characters": None, "text_failed_pages": None}


def text_of(reader: PdfReader) -> tuple[int, int]:
    """(characters of extracted text, pages whose text could not be extracted)."""
    chars = failed = 0
    for page in reader.pages:
        try:
            chars += len(page.extract_text())
        except MALFORMED:
            failed += 1
    return chars, failed


def open_pdf(upload: Upload, ctx: Context) -> PdfReader | None:
    """The reader, decrypted with an empty password when it needs one; None when that does not open it."""
    try:
        reader = PdfReader(upload.path)  # this already tries the empty password
        if reader.is_encrypted and not reader.decrypt(""):
            return None
    except DependencyError as exc:  # AES needs the `cryptography` package, which may not be installed
        ctx.log.warning("cannot decrypt: %s", exc)
        return None
    except MALFORMED as exc:
        raise Reject(f"not a readable PDF: {type(exc).__name__}: {exc}") from None
    return reader


@handler("application/pdf", extensions=[".pdf"])
def pdf_info(upload: Upload, ctx: Context) -> dict[str, object]:
    """Reads a PDF's facts; one locked by a password reports what is knowable, a corrupt one is refused."""
    reader = open_pdf(upload, ctx)
    if reader is None:
        return dict(LOCKED)
    try:
        meta = reader.metadata
        pages = len(reader.pages)
        chars, failed = text_of(reader)
    except MALFORMED as exc:
        raise Reject(f"not a readable PDF: {type(exc).__name__}: {exc}") from None
    return {"encrypted": reader.is_encrypted, "decrypted": reader.is_encrypted, "pages": pages,
            "title": meta.title if meta else None, "author": meta.author if meta else None,
            "text_characters": chars, "text_failed_pages": failed}
