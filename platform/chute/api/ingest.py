"""Uploads: the multipart body is parsed as it arrives and the file part goes straight to its final
place (one write, no temp-file spool), hashed on the way, refused the moment it passes the limit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from chute.addresses import BadAddress, normalize_all
from chute.batching import GroupCommit
from chute.errors import InvalidUploadField, MalformedUpload, MissingFile, UnsupportedType, UploadTooLarge
from chute.jobs import JobService
from chute.models import Job, JobStatus
from chute.registry import HandlerSpec, Registry
from chute.sniff import CONTAINERS, detect
from chute.storage import FileWriter, Storage, clean_filename

log = logging.getLogger("chute.api")
FIELD_LIMIT = 64 * 1024
#: room for the multipart framing and the small fields around the file
FRAMING_SLACK = 1024 * 1024


@dataclass
class Parsed:
    """The body, parsed: the file is written but not yet durable (``persist`` makes it so)."""

    writer: FileWriter
    filename: str
    declared: str | None
    fields: dict[str, list[str]] = field(default_factory=dict)

    @property
    def head(self) -> bytes:
        return self.writer.head


class _Parts:
    """multipart callbacks: headers per part, the file part into ``writer``, the rest into ``fields``."""

    def __init__(self, storage: Storage, job_id: str, limit: int) -> None:
        self.storage, self.job_id, self.limit = storage, job_id, limit
        self.writer: FileWriter | None = None
        self.filename = ""
        self.declared: str | None = None
        self.fields: dict[str, list[str]] = {}
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._field_name: str | None = None
        self._field_value = bytearray()
        self._in_file = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end, "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._headers, self._field_name, self._in_file = {}, None, False
        self._field_value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise MalformedUpload("a part has no Content-Disposition: form-data; name=…")
        name = options[b"name"].decode("utf-8", "replace")
        if name == "file" and self.writer is None:
            self._in_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            ctype = self._headers.get(b"content-type", b"").decode("latin-1").strip()
            self.declared = ctype or None
            self.writer = self.storage.writer(self.job_id, self.limit)
        elif name == "file":
            raise MalformedUpload("one file per upload: send each file in its own request")
        else:
            self._field_name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            assert self.writer is not None
            self.writer.write(data[start:end])
        elif self._field_name is not None:
            self._field_value += data[start:end]
            if len(self._field_value) > FIELD_LIMIT:
                raise InvalidUploadField(f"longer than {FIELD_LIMIT} bytes", self._field_name)

    def on_part_end(self) -> None:
        if self._field_name is not None:
            value = self._field_value.decode("utf-8", "replace")
            self.fields.setdefault(self._field_name, []).append(value)
        self._in_file, self._field_name = False, None

    def on_end(self) -> None:
        self.ended = True


def boundary_of(content_type: str | None) -> bytes:
    ctype, options = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not options.get(b"boundary"):
        raise MalformedUpload("send the file as multipart/form-data (curl -F file=@path)")
    return options[b"boundary"]


async def receive(stream: AsyncIterator[bytes], content_type: str | None, content_length: str | None,
                  storage: Storage, job_id: str, limit: int) -> Parsed:
    """Parse the body into storage; on any failure nothing is left on disk.

    The file is written but not fsynced yet: ``Ingest.persist`` does that with the database insert,
    in one trip to a thread, once the upload is known to be acceptable."""
    boundary = boundary_of(content_type)
    if content_length and content_length.isdigit() and int(content_length) > limit + FRAMING_SLACK:
        raise UploadTooLarge(f"the body ({content_length} bytes) is larger than the limit of {limit} bytes")
    parts = _Parts(storage, job_id, limit)
    # Long part headers are allowed: a 5,000-character file name is cleaned, not refused.
    parser = MultipartParser(boundary, parts.callbacks(), max_header_size=FIELD_LIMIT)  # type: ignore[arg-type]
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
        if not parts.ended:
            raise MalformedUpload("the multipart body ends before its closing boundary")
        if parts.writer is None:
            raise MissingFile()
    except MultipartParseError as exc:
        if parts.writer is not None:
            parts.writer.abort()
        raise MalformedUpload(f"malformed multipart body: {exc}") from None
    except BaseException:
        if parts.writer is not None:
            parts.writer.abort()
        raise
    return Parsed(parts.writer, parts.filename, parts.declared, parts.fields)


def notify_list(values: Sequence[str]) -> list[str]:
    """The ``notify`` fields (repeated, comma-separated or both) as one list of addresses."""
    try:
        return normalize_all(a for value in values for a in value.split(",") if a.strip())
    except BadAddress as exc:
        raise InvalidUploadField(str(exc), "notify") from None


def choose_handler(registry: Registry, parsed: Parsed) -> tuple[HandlerSpec, dict[str, Any], str]:
    """The handler and the type evidence; a forced ``handler`` field wins over routing."""
    detected = detect(parsed.head, parsed.filename, parsed.declared, registry.extension_types)
    forced = [v.strip() for v in parsed.fields.get("handler", []) if v.strip()]
    if forced:
        spec = registry.get(forced[0])
        if spec is None:
            raise InvalidUploadField(f"no handler named {forced[0]!r}; "
                                     f"known: {', '.join(sorted(registry.by_name)) or 'none'}", "handler")
        return spec, detected.info(), detected.mime
    spec = registry.route(detected.mime, CONTAINERS)
    if spec is None:
        raise UnsupportedType(f"no handler for {detected.mime}", registry.accepted())
    return spec, detected.info(), detected.mime


def job_row(job_id: str, parsed: Parsed, spec: HandlerSpec, type_info: dict[str, Any], mime: str,
            notify: list[str]) -> dict[str, Any]:
    """The row, but for what ``persist`` adds once the file is durable (size, hash, times)."""
    return {
        "id": job_id, "status": JobStatus.PENDING, "filename": clean_filename(parsed.filename),
        "content_type": mime, "type_info": type_info, "storage_key": parsed.writer.key, "handler": spec.name,
        "attempts": 0, "max_attempts": spec.retry.attempts, "notify": notify,
    }


class Ingest:
    """Makes an accepted upload durable: the file fsynced, its directory entry fsynced, the job row
    committed, all in one trip to a worker thread. Concurrent uploads share the directory fsync and
    the database commit (group commit), so the disk sees one flush for many requests."""

    def __init__(self, jobs: JobService, grace: float) -> None:
        self.grace = grace
        self.now = jobs.now
        self._rows: GroupCommit[dict[str, Any]] = GroupCommit(jobs.insert)

    def persist(self, writer: FileWriter, row: dict[str, Any]) -> Job:
        stored = writer.finish()
        now = self.now()
        row.update(size=stored.size, sha256=stored.sha256, created_at=now, updated_at=now,
                   dispatch_at=now + timedelta(seconds=self.grace))
        self._rows.submit(row)
        return Job(**row)
