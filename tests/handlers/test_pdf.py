"""handlers/pdf.py on real PDFs: written by hand for text, then through pypdf for metadata and encryption."""

from __future__ import annotations

from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from chute import Reject
from chute.testing import run_handler


def text_pdf(path: Path, texts: list[str]) -> Path:
    """A minimal PDF written by hand: one page per string, drawn in Helvetica, with a correct xref table."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in texts:
        stream = b"BT /F1 24 Tf 72 700 Td (" + text.encode("latin-1") + b") Tj ET"
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 3 0 R >> >> >>" % len(objects))
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def rewrite(source: Path, target: Path, metadata: dict[str, str] | None = None,
            user_password: str | None = None, owner_password: str | None = None) -> Path:
    writer = PdfWriter(clone_from=PdfReader(source))
    if metadata:
        writer.add_metadata(metadata)
    if user_password is not None:
        writer.encrypt(user_password, owner_password, algorithm="RC4-128")
    with target.open("wb") as f:
        writer.write(f)
    return target


def test_pages_and_extracted_text_are_counted(tmp_path: Path) -> None:
    result = run_handler("pdf_info", text_pdf(tmp_path / "doc.pdf", ["Hello world", "Second page"]))
    assert result == {"encrypted": False, "decrypted": False, "pages": 2, "title": None, "author": None,
                      "text_characters": 22, "text_failed_pages": 0}


def test_title_and_author_come_from_the_metadata(tmp_path: Path) -> None:
    source = text_pdf(tmp_path / "plain.pdf", ["Hi"])
    path = rewrite(source, tmp_path / "meta.pdf", {"/Title": "Annual report", "/Author": "Ada Lovelace"})
    result = run_handler("pdf_info", path)
    assert (result["title"], result["author"]) == ("Annual report", "Ada Lovelace")


def test_blank_pages_have_no_text(tmp_path: Path) -> None:
    writer = PdfWriter()
    for _ in range(3):
        writer.add_blank_page(width=200, height=200)
    path = tmp_path / "blank.pdf"
    with path.open("wb") as f:
        writer.write(f)
    result = run_handler("pdf_info", path)
    assert result["pages"] == 3 and result["text_characters"] == 0


def test_a_pdf_locked_by_a_user_password_is_reported_as_encrypted_not_failed(tmp_path: Path) -> None:
    source = text_pdf(tmp_path / "plain.pdf", ["Top secret"])
    path = rewrite(source, tmp_path / "locked.pdf", {"/Title": "Hidden"}, user_password="s3cret")
    assert run_handler("pdf_info", path) == {"encrypted": True, "decrypted": False, "pages": None, "title": None,
                                             "author": None, "text_characters": None, "text_failed_pages": None}


def test_a_pdf_encrypted_with_an_empty_user_password_is_read(tmp_path: Path) -> None:
    source = text_pdf(tmp_path / "plain.pdf", ["Open to all", "Page two"])
    path = rewrite(source, tmp_path / "owner-only.pdf", {"/Author": "Grace"}, user_password="",
                   owner_password="owner")
    result = run_handler("pdf_info", path)
    assert result["encrypted"] is True and result["decrypted"] is True
    assert (result["pages"], result["author"], result["text_characters"]) == (2, "Grace", 19)


def test_garbage_after_a_pdf_header_is_rejected() -> None:
    with pytest.raises(Reject, match="not a readable PDF"):
        run_handler("pdf_info", b"%PDF-1.7\n" + b"not really a pdf\n" * 50, "junk.pdf")


def test_a_truncated_pdf_is_rejected(tmp_path: Path) -> None:
    whole = text_pdf(tmp_path / "whole.pdf", ["Hello world"]).read_bytes()
    with pytest.raises(Reject, match="not a readable PDF"):
        run_handler("pdf_info", whole[: len(whole) // 2], "cut.pdf")
