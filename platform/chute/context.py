"""What a handler receives: the stored file (read-only) and its job's context."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from chute.storage import clean_filename


@dataclass(frozen=True)
class Upload:
    """A read-only view of the stored file and what is known about it."""

    path: Path
    filename: str
    content_type: str
    size: int
    sha256: str = ""

    def open(self, mode: str = "rb", encoding: str | None = None, errors: str | None = None,
             newline: str | None = None) -> IO[Any]:
        if any(flag in mode for flag in "wax+"):
            raise ValueError("an upload is read-only; write output with ctx.save_artifact()")
        if "b" in mode:
            return open(self.path, mode)
        return open(self.path, mode, encoding=encoding or "utf-8", errors=errors, newline=newline)

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()

    @property
    def extension(self) -> str:
        return Path(self.filename).suffix.lower()


@dataclass
class Context:
    """The job a handler runs for: ``attempt`` is 1 on the first run; ``scratch`` is its own directory."""

    job_id: str
    attempt: int
    log: logging.LoggerAdapter[logging.Logger]
    scratch_path: Path
    artifacts_dir: Path
    handler: str = ""
    artifacts: list[str] = field(default_factory=list)
    #: whether ``scratch`` was asked for (and so made): most handlers never need one
    scratch_made: bool = field(default=False, repr=False)

    @property
    def scratch(self) -> Path:
        """A directory of this attempt's own, made on first use and removed when the attempt ends."""
        if not self.scratch_made:
            self.scratch_path.mkdir(parents=True, exist_ok=True)
            self.scratch_made = True
        return self.scratch_path

    def save_artifact(self, name: str, data_or_path: bytes | str | Path) -> Path:
        """Keep an output with the job (bytes or text, or a Path to copy); served at /jobs/{id}/artifacts/{name}."""
        safe = clean_filename(name)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        target = self.artifacts_dir / safe
        if isinstance(data_or_path, bytes):
            target.write_bytes(data_or_path)
        elif isinstance(data_or_path, str):  # text; pass a Path to copy a file
            target.write_text(data_or_path, encoding="utf-8")
        else:
            shutil.copyfile(data_or_path, target)
        if safe not in self.artifacts:
            self.artifacts.append(safe)
        return target


def job_logger(job_id: str, handler: str, attempt: int) -> logging.LoggerAdapter[logging.Logger]:
    return logging.LoggerAdapter(logging.getLogger(f"chute.handler.{handler}"),
                                 {"job_id": job_id, "attempt": attempt})
