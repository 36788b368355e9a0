"""Storage: paths Chute chooses, names cleaned for display, limits enforced while streaming."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_mock

from chute.errors import UploadTooLarge
from chute.storage import Storage, clean_filename


@pytest.mark.parametrize(("raw", "expected"), [
    ("report.csv", "report.csv"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\win.ini", "win.ini"),
    ("a\x00b.csv", "ab.csv"),
    ("", "upload"),
    ("..", "upload"),
    ("/", "upload"),
])
def test_names_are_cleaned_for_display(raw: str, expected: str) -> None:
    assert clean_filename(raw) == expected


def test_a_name_cannot_carry_a_line_break_into_a_header() -> None:
    cleaned = clean_filename("x.csv\r\nBcc: victim@example.com")
    assert "\r" not in cleaned and "\n" not in cleaned


def test_right_to_left_override_is_removed() -> None:
    cleaned = clean_filename("invoice\u202egpj.exe")
    assert "\u202e" not in cleaned
    assert cleaned == "invoicegpj.exe"


def test_a_very_long_name_is_shortened_keeping_its_extension() -> None:
    cleaned = clean_filename("a" * 5000 + ".csv")
    assert len(cleaned) <= 200
    assert cleaned.endswith(".csv")


def test_a_file_is_stored_by_job_id_with_its_hash_and_size(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    writer = storage.writer("0123abcd", limit=1 << 20)
    data = os.urandom(300_000)
    for i in range(0, len(data), 65536):
        writer.write(data[i:i + 65536])
    stored = writer.finish()
    assert stored.path == tmp_path / "01" / "0123abcd"
    assert stored.path.read_bytes() == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.size == len(data)
    assert stored.head == data[:8192]
    assert not stat.S_IMODE(stored.path.stat().st_mode) & 0o222, "handlers get a read-only file"


def test_crossing_the_limit_stops_the_write_and_leaves_nothing(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    writer = storage.writer("0123abcd", limit=100_000)
    writer.write(b"x" * 60_000)
    with pytest.raises(UploadTooLarge):
        writer.write(b"x" * 60_000)
    assert list(tmp_path.rglob("*")) == [tmp_path / "01"]


def test_concurrent_directory_syncs_share_fsyncs_and_all_return(tmp_path: Path, mocker: pytest_mock.MockerFixture,
                                                                wait: Callable[..., Any]) -> None:
    """While one fsync of a folder runs, 19 more callers arrive. They cannot ride on that one (their
    entries may have been written after it began), so they share the next: two fsyncs in all."""
    from chute import storage as storage_module

    callers = 20
    folder = tmp_path.stat()
    first_started, release_first = threading.Event(), threading.Event()
    lock = threading.Lock()
    synced: list[tuple[int, int]] = []  # (device, inode) of what each fsync was given

    def held_fsync(fd: int) -> None:
        opened = os.fstat(fd)
        with lock:
            synced.append((opened.st_dev, opened.st_ino))
            first = len(synced) == 1
        if first:  # the first fsync takes until the test says so
            first_started.set()
            release_first.wait(60)

    mocker.patch.object(os, "fsync", side_effect=held_fsync)  # the one os module, as chute.storage sees it
    dirsync = storage_module.DirSync()
    returned: list[int] = []

    def sync(n: int) -> None:
        dirsync.sync(tmp_path)
        with lock:
            returned.append(n)

    def accounted() -> int:
        """The other callers queued behind the running fsync (the group commit's queue), plus any that
        ran an fsync of their own or returned (which only a broken sharing would let them do)."""
        group = dirsync._dirs.get(tmp_path)
        with lock:
            return (len(group._waiting) if group is not None else 0) + len(synced) - 1 + len(returned)

    threads = [threading.Thread(target=sync, args=(n,), daemon=True) for n in range(callers)]
    threads[0].start()
    assert first_started.wait(10), "the first caller never reached fsync"
    for t in threads[1:]:
        t.start()
    try:
        wait(lambda: accounted() >= callers - 1, 10, message="the other callers to queue behind the running fsync")
    finally:
        release_first.set()
    deadline = time.monotonic() + 10
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a caller never returned"
    assert sorted(returned) == list(range(callers))
    assert set(synced) == {(folder.st_dev, folder.st_ino)}, "only the folder is synced"
    assert len(synced) == 2, "one fsync for the first caller, one shared by the 19 that came while it ran"


def test_artifact_names_cannot_escape_the_job_folder(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    key = storage.key_for("0123abcd")
    (tmp_path / "secret").write_text("no")
    assert storage.artifact(key, "../../secret") is None
    assert storage.artifact(key, "..") is None


def test_a_new_shard_folder_is_made_durable_by_its_first_finished_file(tmp_path: Path,
                                                                       mocker: pytest_mock.MockerFixture) -> None:
    from chute import storage as storage_module

    synced = mocker.spy(storage_module, "fsync_dir")
    storage = Storage(tmp_path)
    refused = storage.writer("abfirst", limit=10)
    with pytest.raises(UploadTooLarge):
        refused.write(b"x" * 11)  # aborted: it made nothing durable
    storage.writer("absecond", limit=10).finish()
    assert tmp_path in [call.args[0] for call in synced.call_args_list], "the root, for the new shard's entry"
    synced.reset_mock()
    storage.writer("abthird", limit=10).finish()
    assert [call.args[0] for call in synced.call_args_list] == [tmp_path / "ab"], "only the shard from then on"
