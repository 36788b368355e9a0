"""The baseline's job table: one SQLite file shared by the API and the Celery worker processes.

What a user's glue would hold: WAL (without it the API's inserts and the workers' updates lock each
other out: "database is locked"), ``synchronous=FULL`` (what Chute commits with), a 30 s busy timeout,
and one connection per thread or process, reused."""

from __future__ import annotations

import os
import sqlite3
import threading

DB = os.environ.get("BASELINE_DB", "baseline.db")
SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, filename TEXT, content_type TEXT, size INTEGER,
    path TEXT NOT NULL, created_at REAL NOT NULL, processed_at REAL)"""
_local = threading.local()


def connect() -> sqlite3.Connection:
    conn = sqlite3.connect(DB, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def db() -> sqlite3.Connection:
    """This thread's connection (sqlite3 connections stay in the thread that made them)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = connect()
    return conn


def create() -> None:
    with connect() as conn:
        conn.execute(SCHEMA)
