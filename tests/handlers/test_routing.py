"""Routing by content: a file whose extension lies still reaches the handler for what it really is."""

from __future__ import annotations

import io

from PIL import Image

from chute.testing import ChuteApp


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "green").save(out, "PNG")
    return out.getvalue()


def test_a_png_named_csv_is_routed_by_its_content_to_the_image_handler(chute_app: ChuteApp) -> None:
    response = chute_app.client.post("/uploads", files={"file": ("data.csv", png_bytes(), "text/csv")})
    assert response.status_code == 202
    chute_app.drain()
    job = chute_app.job(response.json()["id"])
    assert (job["status"], job["handler"], job["content_type"]) == ("processed", "image_info", "image/png")
    assert job["type_info"] == {"detected": "image/png", "sniffed": "image/png", "declared": "text/csv",
                                "extension": "text/csv", "mismatch": True}
    assert (job["result"]["format"], job["result"]["width"], job["result"]["height"]) == ("PNG", 64, 48)


def test_a_word_document_goes_to_the_zip_handler_when_no_handler_claims_its_own_type(chute_app: ChuteApp) -> None:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
    job_id = chute_app.upload(out.getvalue(), "report.docx")["id"]
    chute_app.drain()
    job = chute_app.job(job_id)
    assert job["content_type"] == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert (job["handler"], job["status"], job["result"]["entries"]) == ("zip_info", "processed", 2)


def test_json_lines_without_an_extension_go_to_the_json_lines_handler(chute_app: ChuteApp) -> None:
    job_id = chute_app.upload(b'{"a": 1}\n{"a": 2}\n{"a": 3}\n', "events")["id"]
    chute_app.drain()
    job = chute_app.job(job_id)
    assert (job["handler"], job["status"], job["result"]["records"]) == ("jsonl_info", "processed", 3)
