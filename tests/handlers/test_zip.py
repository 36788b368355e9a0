"""handlers/zip.py on real archives made with zipfile, some of them then doctored the way attackers do."""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chute import Reject
from chute.registry import load_handlers
from chute.testing import run_handler

HANDLERS = Path(__file__).resolve().parents[2] / "handlers"
MiB = 1024 * 1024


def make_zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data, compress_type=compression)
    return out.getvalue()


def central_records(data: bytes | bytearray) -> list[int]:
    """Where each central directory record starts, walked from the end-of-central-directory record."""
    end = data.rfind(b"PK\x05\x06")
    count, _, offset = struct.unpack_from("<HII", data, end + 10)
    starts = []
    for _ in range(count):
        starts.append(offset)
        name, extra, comment = struct.unpack_from("<HHH", data, offset + 28)
        offset += 46 + name + extra + comment
    return starts


def doctor(data: bytes, field: str, value: int) -> bytes:
    """Rewrite one field of every central directory record: what a crafted archive declares."""
    at, fmt = {"flags": (8, "<H"), "compressed": (20, "<I"), "uncompressed": (24, "<I")}[field]
    patched = bytearray(data)
    for start in central_records(data):
        struct.pack_into(fmt, patched, start + at, value)
    return bytes(patched)


def as_zip64(data: bytes, claimed_directory_size: int | None = None) -> bytes:
    """The same archive ended the ZIP64 way: a ZIP64 end record and its locator before an end record whose
    fields say "see ZIP64". ``claimed_directory_size`` makes the ZIP64 record lie about the directory."""
    end = data.rfind(b"PK\x05\x06")
    count, size, offset = struct.unpack_from("<HII", data, end + 10)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                         size if claimed_directory_size is None else claimed_directory_size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:end] + record + locator + eocd


def symlink_zip(name: str, target: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("dir/file.txt", b"hello")
        link = zipfile.ZipInfo(name)
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, target)
    return out.getvalue()


@pytest.fixture
def zip_info_with(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Callable[..., Any]]:
    """The zip_info function with some of its module's limits lowered, to test them without huge files."""

    def patched(**limits: int) -> Callable[..., Any]:
        func = load_handlers(HANDLERS).get("zip_info").func  # type: ignore[union-attr]
        for name, value in limits.items():
            monkeypatch.setitem(func.__globals__, name, value)
        return func

    return patched


def test_entries_sizes_and_listing_are_reported() -> None:
    data = make_zip({"docs/": b"", "docs/a.txt": b"hello " * 100, "b.bin": bytes(range(256))})
    result = run_handler("zip_info", data, "bundle.zip")
    by_name = {e["name"]: e for e in result["listing"]}
    assert (result["entries"], result["files"], result["crc_checked"], result["encrypted_entries"]) == (3, 2, 2, 0)
    assert by_name["docs/a.txt"]["size"] == 600 and by_name["docs/a.txt"]["compressed_size"] < 600
    assert result["total_uncompressed"] == 856
    assert result["total_compressed"] == sum(e["compressed_size"] for e in result["listing"])
    assert result["listing_truncated"] is False


def test_the_listing_is_capped_at_1000_and_says_so() -> None:
    result = run_handler("zip_info", make_zip({f"f{i}.txt": b"x" for i in range(1200)}), "many.zip")
    assert result["entries"] == 1200 and len(result["listing"]) == 1000 and result["listing_truncated"] is True


def test_an_empty_archive_has_no_entries() -> None:
    result = run_handler("zip_info", make_zip({}), "empty.zip")
    assert result["entries"] == 0 and result["listing"] == []


@pytest.mark.parametrize("name", ["../evil.sh", "docs/../../evil.sh", "/etc/cron.d/evil", "C:/Windows/evil.dll",
                                  "docs\\..\\evil.sh"])
def test_an_entry_whose_path_escapes_the_archive_is_rejected(name: str) -> None:
    with pytest.raises(Reject, match="escapes the archive"):
        run_handler("zip_info", make_zip({"ok.txt": b"fine", name: b"payload"}), "slip.zip")


def test_a_symlink_pointing_outside_the_archive_is_rejected() -> None:
    with pytest.raises(Reject, match="symbolic link that escapes"):
        run_handler("zip_info", symlink_zip("dir/link", "../../etc/passwd"), "links.zip")


def test_a_symlink_pointing_inside_the_archive_is_accepted() -> None:
    assert run_handler("zip_info", symlink_zip("link", "dir/file.txt"), "links.zip")["entries"] == 2


def test_a_large_entry_packed_over_100_to_1_is_rejected_as_a_bomb() -> None:
    with pytest.raises(Reject, match=r"likely zip bomb.*over 100:1"):
        run_handler("zip_info", make_zip({"zeros.bin": bytes(11 * MiB)}), "bomb.zip")


def test_a_large_entry_that_compresses_normally_is_accepted() -> None:
    result = run_handler("zip_info", make_zip({"noise.bin": os.urandom(11 * MiB)}), "big.zip")
    assert result["total_uncompressed"] == 11 * MiB and result["crc_checked"] == 1


def test_a_declared_total_over_1_gib_is_rejected_as_a_bomb() -> None:
    small = make_zip({f"part{i}.bin": b"x" for i in range(110)})  # each claims 9.9 MiB: under the ratio check
    with pytest.raises(Reject, match=r"likely zip bomb: \d+ bytes uncompressed, over 1073741824"):
        run_handler("zip_info", doctor(small, "uncompressed", int(9.9 * MiB)), "bomb.zip")


def test_entries_that_overlap_are_rejected_as_a_bomb() -> None:
    data = make_zip({"a.bin": os.urandom(4096), "b.bin": os.urandom(4096)}, zipfile.ZIP_STORED)
    with pytest.raises(Reject, match="more compressed bytes than the file holds"):
        run_handler("zip_info", doctor(data, "compressed", len(data)), "overlap.zip")


def test_an_entry_that_lies_about_its_size_fails_its_crc_check() -> None:
    data = doctor(make_zip({"zeros.bin": bytes(MiB)}), "uncompressed", 1000)
    with pytest.raises(Reject, match=r"'zeros\.bin' is corrupt: Bad CRC-32"):
        run_handler("zip_info", data, "liar.zip")


def test_a_damaged_entry_is_rejected() -> None:
    data = bytearray(make_zip({"text.txt": os.urandom(64 * 1024)}, zipfile.ZIP_STORED))
    data[2000:2010] = bytes(10)  # inside the stored data: only the CRC can tell
    with pytest.raises(Reject, match=r"'text\.txt' is corrupt"):
        run_handler("zip_info", bytes(data), "damaged.zip")


def test_bytes_that_are_not_a_zip_are_rejected() -> None:
    with pytest.raises(Reject, match="not a readable ZIP"):
        run_handler("zip_info", b"PK\x03\x04" + b"\x00" * 100, "broken.zip")


def test_encrypted_entries_are_counted_and_not_read() -> None:
    data = doctor(make_zip({"secret.txt": b"shh"}), "flags", 0x1)
    result = run_handler("zip_info", data, "locked.zip")
    assert result["encrypted_entries"] == 1 and result["crc_checked"] == 0


def test_bzip2_entries_are_listed_but_never_decompressed() -> None:
    result = run_handler("zip_info", make_zip({"a.txt": b"abc" * 1000}, zipfile.ZIP_BZIP2), "bz.zip")
    assert result["entries"] == 1 and result["crc_checked"] == 0


def test_more_entries_than_the_limit_are_rejected(zip_info_with: Callable[..., Any]) -> None:
    with pytest.raises(Reject, match="more than 10 entries"):
        run_handler(zip_info_with(MAX_ENTRIES=10), make_zip({f"{i}": b"" for i in range(11)}), "many.zip")


def test_a_central_directory_over_the_limit_is_rejected_before_it_is_parsed(
        zip_info_with: Callable[..., Any]) -> None:
    data = make_zip({f"{i}": b"" for i in range(11)})
    with pytest.raises(Reject, match="central directory over 300 bytes"):
        run_handler(zip_info_with(MAX_CENTRAL_DIRECTORY=300), data, "many.zip")


def test_a_zip64_archive_is_measured_by_its_zip64_record(zip_info_with: Callable[..., Any]) -> None:
    data = as_zip64(make_zip({"a.txt": b"hello", "noise.bin": os.urandom(10_000)}))  # its end record says 4 GiB
    result = run_handler(zip_info_with(MAX_CENTRAL_DIRECTORY=1000), data, "z64.zip")
    assert result["entries"] == 2 and result["crc_checked"] == 2


def test_a_zip64_record_that_lies_about_the_directory_is_rejected() -> None:
    data = as_zip64(make_zip({"a.txt": b"hello"}), claimed_directory_size=1024**3)
    with pytest.raises(Reject, match="not a readable ZIP"):
        run_handler("zip_info", data, "z64.zip")
