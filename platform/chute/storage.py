"""Files on local disk, at paths Chute chooses: streamed in, hashed on the way, durable before the 202."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import shutil
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chute.batching import GroupCommit
from chute.errors import InsufficientStorage, UploadTooLarge

HEAD_BYTES = 8192
#: start writing back to disk every so often, so the final fsync has little left to do
FLUSH_EVERY = 32 * 1024 * 1024
MAX_NAME = 200
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")
#: control, invisible formatting (bidi overrides like U+202E), surrogate and private-use characters,
#: and the line and paragraph separators (U+2028, U+2029) that some mail and log readers break lines at
_DROPPED = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_LEADING = re.compile(r"^[\s.]+")
#: errors that mean the disk (or the user's quota on it) is full
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def clean_filename(name: str | None) -> str:
    """A display name that is safe to store, log and put in a mail header: never used as a path.

    The result is one path component (no separator, never ``.`` or ``..``, no leading dot), has none
    of the ``_DROPPED`` characters, is at most ``MAX_NAME`` characters, and cleaning it again changes
    nothing (an artifact is found again by its cleaned name)."""
    cleaned = _clean_once(name or "")
    for _ in range(3):  # NFC of a shortened name can differ from the name: settle on a fixed point
        again = _clean_once(cleaned)
        if again == cleaned:
            break
        cleaned = again
    return cleaned or "upload"


def _clean_once(name: str) -> str:
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _DROPPED)
    name = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = _LEADING.sub("", name).rstrip()
    if len(name) > MAX_NAME:
        _, dot, ext = name.rpartition(".")
        ext = ext if dot and 0 < len(ext) <= 16 and ext.strip() == ext else ""
        name = name[: MAX_NAME - len(ext) - 1].rstrip() + ("." + ext if ext else "")
    return name


def extension_of(name: str) -> str:
    _, dot, ext = name.rpartition(".")
    return "." + ext.lower() if dot and ext and len(ext) <= 16 else ""


@dataclass(frozen=True)
class StoredFile:
    key: str
    path: Path
    size: int
    sha256: str
    head: bytes


class DirSync:
    """fsyncs of a directory, grouped: uploads landing in one shard at once share a single fsync."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirs: dict[Path, GroupCommit[None]] = {}

    def sync(self, path: Path) -> None:
        with self._lock:
            group = self._dirs.get(path)
            if group is None:
                group = self._dirs[path] = GroupCommit(functools.partial(_fsync_for, path))
        group.submit(None)


class FileWriter:
    """Receives chunks; refuses to grow past the limit; removes itself unless finished."""

    def __init__(self, path: Path, key: str, limit: int, dirsync: DirSync, new_dir: bool,
                 on_durable: Callable[[], None] = lambda: None) -> None:
        self.path, self.key, self.limit = path, key, limit
        self._dirsync, self._new_dir, self._on_durable = dirsync, new_dir, on_durable
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o440)
        except OSError as exc:
            _raise_if_full(exc)
            raise
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self.size = 0
        self._unflushed = 0
        self._flusher: threading.Thread | None = None
        self._done = False

    def write(self, chunk: bytes | memoryview) -> None:
        if self.size + len(chunk) > self.limit:
            self.abort()
            raise UploadTooLarge(f"the file is larger than the limit of {self.limit} bytes")
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        self._hash.update(chunk)
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self.abort()
            _raise_if_full(exc)
            raise
        self.size += len(chunk)
        self._unflushed += len(chunk)
        if self._unflushed >= FLUSH_EVERY and (self._flusher is None or not self._flusher.is_alive()):
            # fdatasync in a thread: the disk writes back while we keep receiving.
            self._unflushed = 0
            self._flusher = threading.Thread(target=_write_back, args=(self._fd,), daemon=True)
            self._flusher.start()

    @property
    def head(self) -> bytes:
        """The first bytes, for type sniffing before the file is finished."""
        return bytes(self._head)

    def finish(self) -> StoredFile:
        """Make the bytes and the directory entry durable; blocking, so call it off the event loop."""
        if self._flusher is not None:
            self._flusher.join()
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.abort()
            _raise_if_full(exc)
            raise
        os.close(self._fd)
        self._done = True
        self._dirsync.sync(self.path.parent)
        if self._new_dir:
            self._dirsync.sync(self.path.parent.parent)
        self._on_durable()
        return StoredFile(self.key, self.path, self.size, self._hash.hexdigest(), bytes(self._head))

    def abort(self) -> None:
        """Remove the unfinished file; a finished one is left alone (see ``discard``)."""
        if self._done:
            return
        self._done = True
        if self._flusher is not None:
            self._flusher.join()
        try:
            os.close(self._fd)
        finally:
            self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the file, finished or not: no job row will ever point at it."""
        self.abort()
        self.path.unlink(missing_ok=True)


def _write_back(fd: int) -> None:
    """An early fdatasync; an error here (a full disk) is reported again by ``finish``'s fsync."""
    with contextlib.suppress(OSError):
        os.fdatasync(fd)


def _raise_if_full(exc: OSError) -> None:
    if exc.errno in DISK_FULL:
        raise InsufficientStorage(f"the server's disk is full ({os.strerror(exc.errno or 0)}); "
                                  "nothing was kept, try again later") from exc


def _fsync_for(path: Path, _items: list[None]) -> None:
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """A job's original is ``<root>/<id[:2]>/<id>`` (read-only); its artifacts are in ``<id>.artifacts/``
    beside it. Paths come from the job id alone, never from the client's file name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._dirsync = DirSync()
        self._root_str = str(root)
        self._shards: set[str] = set()  # shard folders a finished file has already made durable

    def key_for(self, job_id: str) -> str:
        return f"{job_id[:2]}/{job_id}"

    def path(self, key: str) -> Path:
        return self.root / key

    def locations(self, key: str) -> tuple[str, str]:
        """(original, artifacts folder) as plain strings: what a worker hands a child, per job, cheaply."""
        original = os.path.join(self._root_str, key)
        return original, original + ".artifacts"

    def writer(self, job_id: str, limit: int) -> FileWriter:
        key = self.key_for(job_id)
        path = self.path(key)
        new_dir = key[:2] not in self._shards  # until a finished file has made its folder durable
        if new_dir:
            try:
                path.parent.mkdir(exist_ok=True)
            except OSError as exc:
                _raise_if_full(exc)
                raise
        return FileWriter(path, key, limit, self._dirsync, new_dir, lambda: self._shards.add(key[:2]))

    def artifacts_dir(self, key: str) -> Path:
        return self.path(key + ".artifacts")

    def artifact(self, key: str, name: str) -> Path | None:
        """The artifact called ``name``, or None; a name can never reach outside the job's folder."""
        if name != clean_filename(name):
            return None
        path = self.artifacts_dir(key) / name
        return path if path.is_file() else None

    def list_artifacts(self, key: str) -> list[str]:
        folder = self.artifacts_dir(key)
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        shutil.rmtree(self.artifacts_dir(key), ignore_errors=True)
