"""ZIP archives: what is inside, listed without extracting anything; bombs and path escapes are refused."""

from __future__ import annotations

import posixpath
import re
import stat
import struct
import zipfile
import zlib

from chute import Context, Reject, Upload, handler

#: a central directory over this many bytes is refused before zipfile turns it into objects (~350,000 entries
#: at most); past that, more entries than MAX_ENTRIES is refused
MAX_CENTRAL_DIRECTORY = 16 * 1024**2
MAX_ENTRIES = 100_000
#: more uncompressed bytes than this, all entries together, is refused as a zip bomb
MAX_TOTAL_UNCOMPRESSED = 1024**3
#: an entry over RATIO_MIN_SIZE uncompressed that packs tighter than MAX_RATIO:1 is refused as a zip bomb
MAX_RATIO = 100
RATIO_MIN_SIZE = 10 * 1024**2
MAX_LISTING = 1000
MAX_LINK_TARGET = 4096
CHUNK = 1024 * 1024
#: methods zipfile decompresses with a bound on each chunk's output; bzip2 and LZMA it decompresses without one,
#: and 200 MiB of zeros is 177 bytes of bzip2: an entry that lies about its size could take gigabytes. Never read.
READABLE = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
BROKEN = (zipfile.BadZipFile, zlib.error, EOFError, struct.error, ValueError)
_DRIVE = re.compile(r"^[A-Za-z]:")
_EOCD, _ZIP64_LOCATOR, _ZIP64_EOCD = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"


def central_directory_size(upload: Upload) -> int:
    """How many bytes of central directory zipfile would parse into one object per entry: the size the end
    records declare (ZIP64's, when there is a ZIP64 record), but never more than the file holds."""
    with upload.open("rb") as f:
        f.seek(max(0, upload.size - 22 - 0xFFFF - 76))  # the record, a comment of up to 64 KiB, ZIP64's records
        tail = f.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) < at + 22:
            return 0  # not a ZIP: zipfile will say so
        declared: int = struct.unpack_from("<I", tail, at + 12)[0]
        if at >= 20 and tail[at - 20:at - 16] == _ZIP64_LOCATOR:
            records = [tail[max(0, at - 76):at - 20]]  # where zipfile looks: just before the locator
            f.seek(min(upload.size, struct.unpack_from("<Q", tail, at - 12)[0]))  # and where the locator points
            records.append(f.read(56))
            zip64 = [struct.unpack_from("<Q", r, 40)[0] for r in records if len(r) == 56 and r[:4] == _ZIP64_EOCD]
            declared = max(zip64, default=declared)
    return min(declared, upload.size)


def escapes(name: str) -> bool:
    """Whether extracting ``name`` could write outside the folder it is extracted into."""
    return name.startswith("/") or "\\" in name or _DRIVE.match(name) is not None or ".." in name.split("/")


def is_encrypted(info: zipfile.ZipInfo) -> bool:
    return bool(info.flag_bits & 0x1)


def check_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Refuse an entry that would write outside the archive's folder, or that is a bomb by its own numbers."""
    if escapes(info.filename):
        raise Reject(f"entry {info.filename!r} has a path that escapes the archive")
    if info.file_size > RATIO_MIN_SIZE and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise Reject(f"entry {info.filename!r} is a likely zip bomb: {info.file_size} bytes packed into "
                     f"{info.compress_size} (over {MAX_RATIO}:1)")
    if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):  # a Unix symbolic link
        if is_encrypted(info) or info.compress_type not in READABLE:
            raise Reject(f"entry {info.filename!r} is a symbolic link whose target cannot be checked")
        with archive.open(info) as link:
            target = link.read(MAX_LINK_TARGET).decode("utf-8", "replace")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(info.filename), target))
        if escapes(target) or escapes(resolved):
            raise Reject(f"entry {info.filename!r} is a symbolic link that escapes the archive: {target!r}")


def verify_crcs(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> int:
    """Read each entry we safely can, in memory and a chunk at a time, so that zipfile checks its CRC; returns
    how many were checked. zipfile never returns more than an entry's declared size (a lie shows as a bad
    CRC), and the declared sizes are already within MAX_TOTAL_UNCOMPRESSED: that is the byte budget."""
    checked = 0
    for info in infos:
        if info.is_dir() or is_encrypted(info) or info.compress_type not in READABLE:
            continue
        try:
            with archive.open(info) as data:
                while data.read(CHUNK):
                    pass
        except BROKEN as exc:
            raise Reject(f"entry {info.filename!r} is corrupt: {exc}") from None
        checked += 1
    return checked


@handler("application/zip", extensions=[".zip"])
def zip_info(upload: Upload, ctx: Context) -> dict[str, object]:
    """Lists a ZIP and checks its entries' CRCs, extracting nothing; a bomb, a path that escapes the archive
    or a corrupt archive is refused at once."""
    if central_directory_size(upload) > MAX_CENTRAL_DIRECTORY:
        raise Reject(f"a central directory over {MAX_CENTRAL_DIRECTORY} bytes: too many entries")
    try:
        with zipfile.ZipFile(upload.path) as archive:
            infos = archive.infolist()
            total = sum(i.file_size for i in infos)
            packed = sum(i.compress_size for i in infos)
            if len(infos) > MAX_ENTRIES:
                raise Reject(f"more than {MAX_ENTRIES} entries")
            if total > MAX_TOTAL_UNCOMPRESSED:
                raise Reject(f"a likely zip bomb: {total} bytes uncompressed, over {MAX_TOTAL_UNCOMPRESSED}")
            if packed > upload.size:
                raise Reject("a likely zip bomb: its entries claim more compressed bytes than the file holds")
            for info in infos:
                check_entry(archive, info)
            checked = verify_crcs(archive, infos)
    except BROKEN as exc:
        raise Reject(f"not a readable ZIP: {exc}") from None
    return {
        "entries": len(infos), "files": sum(not i.is_dir() for i in infos),
        "total_compressed": packed, "total_uncompressed": total,
        "encrypted_entries": sum(is_encrypted(i) for i in infos), "crc_checked": checked,
        "listing": [{"name": i.filename, "size": i.file_size, "compressed_size": i.compress_size}
                    for i in infos[:MAX_LISTING]],
        "listing_truncated": len(infos) > MAX_LISTING,
    }
