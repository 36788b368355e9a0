"""Uploads: the multipart body is parsed as it arrives and the file part goes straight to its final
place (one write, no temp-file spool), hashed on the way, refused the moment it passes the limit."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import Enum, String, Table

from chute.addresses import BadAddress, Recipients
from chute.batching import GroupCommit
from chute.errors import (
    FormTooLarge,
    InvalidUploadField,
    MalformedUpload,
    MissingFile,
    UnsupportedType,
    UploadTimeout,
    UploadTooLarge,
)
from chute.jobs import JobService
from chute.models import Job, JobStatus
from chute.registry import HandlerSpec, Registry
from chute.settings import Settings
from chute.sniff import CONTAINERS, detect
from chute.storage import FileWriter, Storage, clean_filename

log = logging.getLogger("chute.api")
#: the most bytes one non-file field may hold (CHUTE_MAX_FIELD_BYTES caps them all together)
FIELD_LIMIT = 64 * 1024
#: room for the multipart framing around the file and the fields
FRAMING_SLACK = 1024 * 1024
#: RFC 2046 §5.1.1: 1 to 70 characters from this set, the last one not a space
BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
JOBS_TABLE: Table = Job.__table__  # type: ignore[assignment]
#: the job columns with a length, and that length: a longer value is refused before the insert
COLUMN_LENGTHS = {c.name: c.type.length for c in JOBS_TABLE.c
                  if isinstance(c.type, String) and not isinstance(c.type, Enum) and c.type.length}
CONTENT_TYPE_MAX = COLUMN_LENGTHS["content_type"]


@dataclass(frozen=True)
class Limits:
    """What one upload may take: bytes, parts, fields, header bytes, and time (see the settings)."""

    file_bytes: int
    fields: int = 64
    field_bytes: int = 256 * 1024
    parts: int = 128
    header_bytes: int = 16 * 1024
    idle_timeout: float = 30.0
    body_timeout: float = 1800.0

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.max_upload_bytes, settings.max_fields, settings.max_field_bytes, settings.max_parts,
                   settings.max_header_bytes, settings.upload_idle_timeout, settings.upload_body_timeout)

    @property
    def body_bytes(self) -> int:
        """The most a whole body may be: the file, the fields, and the framing around them."""
        return self.file_bytes + self.field_bytes + FRAMING_SLACK


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
    """multipart callbacks: headers per part, the file part into ``writer``, the rest into ``fields``.
    Everything the client controls is counted as it arrives: parts, fields, their bytes, header bytes."""

    def __init__(self, storage: Storage, job_id: str, limits: Limits) -> None:
        self.storage, self.job_id, self.limits = storage, job_id, limits
        self.writer: FileWriter | None = None
        self.filename = ""
        self.declared: str | None = None
        self.fields: dict[str, list[str]] = {}
        self.ended = False
        self.parts = 0
        self.field_count = 0
        self.field_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
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
        self.parts += 1
        if self.parts > self.limits.parts:
            raise FormTooLarge(f"more than {self.limits.parts} parts in one upload (CHUTE_MAX_PARTS)")
        self._headers, self._header_bytes, self._field_name, self._in_file = {}, 0, None, False
        self._field_value = bytearray()

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.header_bytes:
            raise MalformedUpload(f"a part's headers are longer than {self.limits.header_bytes} bytes "
                                  "(CHUTE_MAX_HEADER_BYTES)")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self._header_field.lower()
        if b"\x00" in self._header_value:
            what = "field or file name" if name == b"content-disposition" else name.decode("latin-1") + " header"
            raise MalformedUpload(f"a part's {what} contains a NUL byte")
        self._headers[name] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise MalformedUpload("a part has no Content-Disposition: form-data; name=…")
        name = options[b"name"].decode("utf-8", "replace")
        if name == "file" and b"filename" not in options:
            raise InvalidUploadField("expected a file (a part with a filename=…), got a plain form field", "file")
        if name == "file" and self.writer is None:
            self._in_file = True
            self.filename = options[b"filename"].decode("utf-8", "replace")
            self.declared = self._declared_type()
            self.writer = self.storage.writer(self.job_id, self.limits.file_bytes)
        elif name == "file":
            raise MalformedUpload("one file per upload: send each file in its own request")
        else:
            self.field_count += 1
            if self.field_count > self.limits.fields:
                raise FormTooLarge(f"more than {self.limits.fields} form fields in one upload (CHUTE_MAX_FIELDS)")
            self._field_name = name

    def _declared_type(self) -> str | None:
        ctype = self._headers.get(b"content-type", b"").decode("latin-1").strip()
        if len(ctype) > CONTENT_TYPE_MAX:
            raise MalformedUpload(f"the file's Content-Type is {len(ctype)} characters long; "
                                  f"at most {CONTENT_TYPE_MAX} are kept")
        if any(ord(c) < 32 or ord(c) == 127 for c in ctype):
            raise MalformedUpload("the file's Content-Type contains a control character")
        return ctype or None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            assert self.writer is not None
            self.writer.write(data[start:end])
        elif self._field_name is not None:
            chunk = data[start:end]
            self.field_bytes += len(chunk)
            if self.field_bytes > self.limits.field_bytes:
                raise FormTooLarge(f"the form fields are longer than {self.limits.field_bytes} bytes together "
                                   "(CHUTE_MAX_FIELD_BYTES)")
            if b"\x00" in chunk:
                raise InvalidUploadField("contains a NUL byte", self._field_name)
            self._field_value += chunk
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
    boundary = options[b"boundary"]
    if len(boundary) > 70:
        raise MalformedUpload(f"the multipart boundary is {len(boundary)} characters long; "
                              "RFC 2046 allows at most 70")
    if not BOUNDARY.fullmatch(boundary):
        raise MalformedUpload("the multipart boundary has characters RFC 2046 does not allow "
                              "(letters, digits and '()+_,-./:=? only)")
    return boundary


async def _chunks(stream: AsyncIterator[bytes], limits: Limits) -> AsyncIterator[bytes]:
    """The body's chunks, cut with ``UploadTimeout`` when one is slower than the idle timeout to come
    or the whole body takes longer than the body timeout.

    One timer per upload, not one per chunk (an ``asyncio.timeout`` per chunk cost a third of parsing
    a small upload): it looks at the time of the last chunk when it fires, and sets itself again for
    that chunk's idle deadline while chunks keep coming; only a stall or the end of the body's time
    cancels the request's task, and that cancel is told apart from any other."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    started = loop.time()
    deadline = started + limits.body_timeout
    last = started
    cut: list[UploadTimeout] = []
    timer: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal timer
        now = loop.time()
        if now >= deadline:
            cut.append(UploadTimeout(f"the body took longer than {limits.body_timeout:g} s "
                                     "(CHUTE_UPLOAD_BODY_TIMEOUT)"))
        elif now - last >= limits.idle_timeout:
            cut.append(UploadTimeout(f"the body stalled: nothing arrived for {limits.idle_timeout:g} s "
                                     "(CHUTE_UPLOAD_IDLE_TIMEOUT)"))
        else:
            timer = loop.call_at(min(last + limits.idle_timeout, deadline), check)
            return
        task.cancel()

    timer = loop.call_at(min(started + limits.idle_timeout, deadline), check)
    try:
        async for chunk in stream:
            last = loop.time()
            yield chunk
    except asyncio.CancelledError:
        if cut and task.uncancel() == 0:
            raise cut[0] from None
        raise
    finally:
        timer.cancel()


async def receive(stream: AsyncIterator[bytes], content_type: str | None, content_length: str | None,
                  storage: Storage, job_id: str, limits: Limits) -> Parsed:
    """Parse the body into storage; on any failure nothing is left on disk.

    The file is written but not fsynced yet: ``Ingest.persist`` does that with the database insert,
    in one trip to a thread, once the upload is known to be acceptable."""
    boundary = boundary_of(content_type)
    limit = limits.file_bytes
    if content_length and content_length.isdigit() and int(content_length) > limits.body_bytes:
        raise UploadTooLarge(f"the body ({content_length} bytes) is larger than the limit of {limit} bytes")
    parts = _Parts(storage, job_id, limits)
    parser = MultipartParser(boundary, parts.callbacks(), max_header_size=limits.header_bytes)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in _chunks(stream, limits):
            received += len(chunk)
            if received > limits.body_bytes:  # a body without Content-Length: the framing cannot grow forever
                raise UploadTooLarge(f"the body is larger than the limit of {limit} bytes and its form fields")
            parser.write(chunk)
        parser.finalize()
        if not parts.ended:
            raise MalformedUpload("the multipart body ends before its closing boundary")
        if parts.writer is None:
            raise MissingFile()
    except MultipartParseError as exc:
        if parts.writer is not None:
            parts.writer.abort()
        if "header size" in str(exc):
            raise MalformedUpload(f"a part's header is longer than {limits.header_bytes} bytes "
                                  "(CHUTE_MAX_HEADER_BYTES)") from None
        raise MalformedUpload(f"malformed multipart body: {exc}") from None
    except BaseException:
        if parts.writer is not None:
            parts.writer.abort()
        raise
    return Parsed(parts.writer, parts.filename, parts.declared, parts.fields)


def notify_list(values: Sequence[str], settings: Settings | None = None) -> list[str]:
    """The ``notify`` fields (repeated, comma-separated or both) as one list of addresses, within the
    operator's rules: at most ``CHUTE_NOTIFY_MAX`` of them, each in ``CHUTE_NOTIFY_DOMAINS`` when that
    is set (no settings: the defaults, 10 and any domain). The first bad one is a 422 on ``notify``."""
    if settings is None:
        rules = Recipients(limit=Settings.model_fields["notify_max"].default)
    else:
        rules = Recipients(limit=settings.notify_max, domains=tuple(settings.notify_domains))
    try:
        return rules.check(a for value in values for a in value.split(",") if a.strip())
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
    row = {
        "id": job_id, "status": JobStatus.PENDING, "filename": clean_filename(parsed.filename),
        "content_type": mime, "type_info": type_info, "storage_key": parsed.writer.key, "handler": spec.name,
        "attempts": 0, "max_attempts": spec.retry.attempts, "notify": notify,
    }
    check_row(row)
    return row


def check_row(row: dict[str, Any]) -> None:
    """Refuse, before it reaches a group commit that other uploads share, a row the database would:
    a value longer than its column, or a NUL byte (PostgreSQL text cannot hold one)."""
    for name, length in COLUMN_LENGTHS.items():
        value = row.get(name)
        if isinstance(value, str) and (len(value) > length or "\x00" in value):
            raise InvalidUploadField(f"the upload's {name.replace('_', ' ')} cannot be stored: "
                                     f"at most {length} characters and no NUL bytes", "file")


def row_refused(exc: BaseException) -> bool:
    """Whether a failed insert is about a row's values (a constraint, a value the column cannot hold)
    rather than the database itself: then the batch is worth inserting again one row at a time."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"IntegrityError", "DataError"}) or isinstance(exc, (ValueError, TypeError))


class Ingest:
    """Makes an accepted upload durable: the file fsynced, its directory entry fsynced, the job row
    committed, all in one trip to a worker thread. Concurrent uploads share the directory fsync and
    the database commit (group commit), so the disk sees one flush for many requests; a row the
    database refuses fails its own upload alone (``row_refused``)."""

    def __init__(self, jobs: JobService, grace: float) -> None:
        self.grace = grace
        self.now = jobs.now
        self._rows: GroupCommit[dict[str, Any]] = GroupCommit(jobs.insert, isolate=row_refused)

    def persist(self, writer: FileWriter, row: dict[str, Any]) -> Job:
        stored = writer.finish()
        now = self.now()
        row.update(size=stored.size, sha256=stored.sha256, created_at=now, updated_at=now,
                   dispatch_at=now + timedelta(seconds=self.grace))
        self._rows.submit(row)
        return Job(**row)
