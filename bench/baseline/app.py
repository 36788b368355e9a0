"""The baseline's API: the FastAPI glue a user would write around Celery.

``POST /uploads`` takes an ``UploadFile``, saves it to disk (copied, flushed and fsynced: the file
itself, not its directory entry), inserts a SQLite row, commits, sends the Celery task and answers
202 with the job. ``GET /jobs/{id}`` reads the row. Plain ``def`` endpoints: the file copy, the
commit and Celery's publish all block, so FastAPI runs them in its thread pool, as its docs advise.

Run: uvicorn app:app --app-dir bench/baseline (bench/cost.py starts it). Environment: those of
tasks.py, and BASELINE_FILES (the folder the uploads go to)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import store
from fastapi import FastAPI, File, HTTPException, UploadFile
from tasks import process

FILES = Path(os.environ.get("BASELINE_FILES", "files"))
FILES.mkdir(parents=True, exist_ok=True)
store.create()
app = FastAPI(title="baseline")
COLUMNS = ("id", "status", "filename", "content_type", "size", "created_at", "processed_at")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/uploads", status_code=202)
def upload(file: UploadFile = File(...)) -> dict[str, Any]:
    job_id = uuid.uuid4().hex
    path = FILES / job_id
    with path.open("wb") as out:
        shutil.copyfileobj(file.file, out, 1024 * 1024)
        out.flush()
        os.fsync(out.fileno())
    job = {"id": job_id, "status": "pending", "filename": file.filename, "content_type": file.content_type,
           "size": path.stat().st_size, "created_at": time.time(), "processed_at": None}
    with store.db() as conn:
        conn.execute("INSERT INTO jobs (id, status, filename, content_type, size, path, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (job_id, "pending", job["filename"], job["content_type"], job["size"], str(path),
                      job["created_at"]))
    process.delay(job_id)
    return job


@app.get("/jobs/{job_id}")
def get_job(job_id: str) -> dict[str, Any]:
    row = store.db().execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise HTTPException(404, f"no job {job_id}")
    return dict(zip(COLUMNS, row, strict=True))
