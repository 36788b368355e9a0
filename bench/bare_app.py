"""The baseline: a bare FastAPI endpoint that only saves the uploaded file (UploadFile, as the docs show).

/save copies the spooled upload to a file and fsyncs it (the durability Chute promises);
/save-nosync skips the fsync (what most tutorials do)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from fastapi import FastAPI, File, UploadFile

app = FastAPI()
ROOT = Path(os.environ.get("BARE_DIR", "var/bench/bare"))
ROOT.mkdir(parents=True, exist_ok=True)


def _save(file: UploadFile, sync: bool) -> dict[str, object]:
    path = ROOT / uuid.uuid4().hex
    with path.open("wb") as out:
        shutil.copyfileobj(file.file, out, 1024 * 1024)
        if sync:
            out.flush()
            os.fsync(out.fileno())
    return {"saved": path.name}


@app.post("/save", status_code=202)
def save(file: UploadFile = File(...)) -> dict[str, object]:
    return _save(file, sync=True)


@app.post("/save-nosync", status_code=202)
def save_nosync(file: UploadFile = File(...)) -> dict[str, object]:
    return _save(file, sync=False)
