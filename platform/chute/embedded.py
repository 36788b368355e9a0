"""The embedded broker: kombu's filesystem transport, made durable and lossless.

Stock kombu deletes a message file when it is fetched, so a worker that dies before acking loses it.
Here a fetch renames the file into ``inflight/<pid>/`` (atomic, so two processes never get the same
one), an ack deletes it, and the files of a process that is no longer alive go back to the queue,
marked redelivered. Writes are renamed into place, so a half-written message is never read.

Message files are not fsynced: the database is the record, and ``queued_job_ids`` lets a worker
find (and re-send) a job whose message a power cut took, instead of paying an fsync per message."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from functools import cached_property
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.transport import filesystem

INFLIGHT = "inflight"
log = logging.getLogger("chute.embedded")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Channel(filesystem.Channel):
    @cached_property
    def root(self) -> Path:
        return Path(self.transport_options["root"])

    @cached_property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @cached_property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def inflight_dir(self) -> Path:
        return self.root / INFLIGHT / str(os.getpid())  # not cached: a forked child has a pid of its own

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        job = str((payload.get("headers") or {}).get("x-chute-job", "-"))
        name = f"{time.time_ns():020d}_{uuid.uuid4().hex[:12]}_{job}.{queue}.msg"
        tmp = self.tmp_dir / name
        tmp.write_bytes(json.dumps(payload).encode())
        os.rename(tmp, self.queue_dir / name)

    def _get(self, queue: str, timeout: Any = None) -> Any:
        suffix = f".{queue}.msg"
        for name in sorted(n for n in os.listdir(self.queue_dir) if n.endswith(suffix)):
            held = self.inflight_dir / name
            try:
                os.rename(self.queue_dir / name, held)
            except FileNotFoundError:
                continue  # another consumer took it first
            try:
                payload = json.loads(held.read_bytes())
            except ValueError:
                log.warning("dropped a damaged message file %s (the job is re-sent from the database)", name)
                held.unlink(missing_ok=True)
                continue
            payload["properties"]["chute_inflight"] = str(held)
            return payload
        raise Empty()

    def _size(self, queue: str) -> int:
        suffix = f".{queue}.msg"
        return sum(1 for n in os.listdir(self.queue_dir) if n.endswith(suffix))

    def _purge(self, queue: str) -> int:
        suffix = f".{queue}.msg"
        count = 0
        for name in os.listdir(self.queue_dir):
            if name.endswith(suffix):
                (self.queue_dir / name).unlink(missing_ok=True)
                count += 1
        return count

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        held = self.qos.get(delivery_tag).properties.get("chute_inflight")
        super().basic_ack(delivery_tag, multiple)
        if held:
            Path(held).unlink(missing_ok=True)

    def _restore(self, message: Any) -> None:
        held = message.properties.pop("chute_inflight", None)
        message.properties.setdefault("delivery_info", {})["redelivered"] = True
        super()._restore(message)
        if held:
            Path(held).unlink(missing_ok=True)


class Transport(filesystem.Transport):
    Channel = Channel
    driver_type = driver_name = "chute-embedded"

    def __init__(self, client: Any, **kwargs: Any) -> None:
        root = Path(client.transport_options["root"])
        for sub in ("queue", "tmp", "control", f"{INFLIGHT}/{os.getpid()}"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        client.transport_options.setdefault("data_folder_in", str(root / "queue"))
        client.transport_options.setdefault("data_folder_out", str(root / "queue"))
        client.transport_options.setdefault("control_folder", str(root / "control"))
        client.transport_options.setdefault("polling_interval", 0.02)
        super().__init__(client, **kwargs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_orphans(root: Path) -> int:
    """Put back the messages held by processes that died without acking them; returns how many."""
    inflight = root / INFLIGHT
    if not inflight.is_dir():
        return 0
    restored = 0
    for owner in inflight.iterdir():
        if not owner.name.isdigit() or int(owner.name) == os.getpid() or _alive(int(owner.name)):
            continue
        for held in sorted(owner.iterdir()):
            payload = json.loads(held.read_bytes())
            payload["properties"].pop("chute_inflight", None)
            payload["properties"].setdefault("delivery_info", {})["redelivered"] = True
            tmp = root / "tmp" / held.name
            tmp.write_bytes(json.dumps(payload).encode())
            os.replace(tmp, root / "queue" / held.name)
            held.unlink(missing_ok=True)
            restored += 1
        _fsync_dir(root / "queue")
        with contextlib.suppress(OSError):
            owner.rmdir()  # a process of that pid may have started since and made files
    return restored


def queued_job_ids(root: Path) -> set[str]:
    """Job ids that have a message waiting or held, read from the file names (no file is opened)."""
    names = [n for n in os.listdir(root / "queue")]
    inflight = root / INFLIGHT
    if inflight.is_dir():
        for owner in inflight.iterdir():
            with contextlib.suppress(FileNotFoundError):
                names += os.listdir(owner)
    return {n.split(".", 1)[0].split("_", 2)[2] for n in names if n.count("_") >= 2}
