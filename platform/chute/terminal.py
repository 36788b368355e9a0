"""How the ``chute`` command shows jobs in a terminal (rich): the list, and the one view of a job from
upload to email. It renders the API's JSON and talks to nothing itself.

Every value a user sent (file names, results, errors, addresses) goes in as ``Text``, never as a
string rich would read as markup: a file named ``[red]x`` is shown as it is. In a narrow terminal the
file name gives way first; status and handler keep their width."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.table import Column, Table
from rich.text import Text

#: characters of a job id ``chute jobs`` shows: the end of the id, its random part (the start is the
#: upload's millisecond, shared by jobs uploaded together); ``chute job``/``cancel``/``retry`` take it
SHORT_ID = 8
#: lines of a traceback the job view shows (the API keeps its last 25)
TRACEBACK_TAIL = 12
STATUS_STYLE = {"pending": "cyan", "running": "blue", "retrying": "yellow", "processed": "green", "failed": "red",
                "cancelled": "magenta"}


def short_id(job_id: str) -> str:
    return job_id[-SHORT_ID:]


def when(value: str | None, seconds: bool = True) -> str:
    """An API timestamp in this machine's time zone, short (month-day hour:minute:second)."""
    if not value:
        return ""
    moment = datetime.fromisoformat(value).astimezone()
    return moment.strftime("%m-%d %H:%M:%S" if seconds else "%m-%d %H:%M")


def took(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def size(n: int) -> str:
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({n} bytes)"


def status_text(job: dict[str, Any]) -> Text:
    text = Text(job["status"], style=STATUS_STYLE.get(job["status"], ""))
    if job.get("cancel_requested"):
        text.append(f" (cancel: {job['cancel_requested']})", style="magenta")
    return text


def jobs_table(items: Sequence[dict[str, Any]], caption: str | None = None) -> Table:
    """The list: short id, status, handler, file (the one column that shrinks), attempts, created."""
    table = Table(Column("id", no_wrap=True), Column("status", no_wrap=True), Column("handler", no_wrap=True),
                  Column("file", overflow="ellipsis"), Column("tries", no_wrap=True, justify="right"),
                  Column("created", no_wrap=True), box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True,
                  pad_edge=False, show_edge=False, caption=caption, caption_justify="left")
    for job in items:
        table.add_row(short_id(job["id"]), Text(job["status"], style=STATUS_STYLE.get(job["status"], "")),
                      Text(job["handler"]), Text(job["filename"], no_wrap=True, overflow="ellipsis"),
                      f"{job['attempts']}/{job['max_attempts']}", when(job["created_at"]))
    return table


def _facts(job: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    evidence = job.get("type_info") or {}
    said = {"sniffed": "sniffed", "declared": "declared", "extension": "by extension"}
    found = ", ".join(f"{said[key]} {value}" for key, value in evidence.items() if key in said and value)
    rows: list[tuple[str, RenderableType]] = [
        ("job", Text(job["id"])),
        ("status", status_text(job)),
        ("file", Text(job["filename"])),
        ("type", Text(job["content_type"] + (f"  ({found})" if found else ""))),
        ("size", size(job["size"])),
        ("sha256", Text(job["sha256"])),
        ("handler", Text(job["handler"])),
        ("attempts", f"{job['attempts']} of {job['max_attempts']}"),
        ("created", when(job["created_at"])),
    ]
    for label, key in (("started", "started_at"), ("finished", "finished_at"), ("next attempt", "next_attempt_at")):
        if job.get(key):
            rows.append((label, when(job[key])))
    if job.get("notify"):
        rows.append(("notify", Text(", ".join(job["notify"]))))
    rows.append(("download", Text(job["links"].get("file", ""))))
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def _attempts(attempts: Sequence[dict[str, Any]]) -> Table:
    table = Table("#", "started", "took", "outcome", "error", "worker", title="attempts", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for a in attempts:
        error = ": ".join(part for part in (a.get("error_type"), a.get("error_message")) if part)
        table.add_row(str(a["number"]), when(a["started_at"]), took(a["started_at"], a.get("finished_at")),
                      Text(a.get("outcome") or "running", style=STATUS_STYLE.get(a.get("outcome") or "", "")),
                      Text(error), Text(a["worker"], overflow="ellipsis", no_wrap=True))
    return table


def _error(error: dict[str, Any]) -> Group:
    head = Text.assemble(("error  ", "bold red"), (f"{error.get('type', '')}: {error.get('message', '')}", "red"))
    parts: list[RenderableType] = [head]
    tail = (error.get("traceback") or "").splitlines()[-TRACEBACK_TAIL:]
    if tail:
        parts.append(Text("\n".join(tail), style="dim"))
    return Group(*parts)


def _emails(notifications: Sequence[dict[str, Any]]) -> Table:
    table = Table("to", "event", "state", "tries", "sent / last error", title="emails", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for n in notifications:
        detail = when(n.get("sent_at")) if n.get("sent_at") else (n.get("last_error") or "")
        table.add_row(Text(n["recipient"]), n["event"], Text(n["status"]), str(n["attempts"]), Text(detail))
    return table


def job_view(job: dict[str, Any], attempts: Sequence[dict[str, Any]]) -> Group:
    """One job from upload to email: the file's facts, each attempt, the error with its traceback's
    tail, the result, the artifacts, and every email with its state."""
    parts: list[RenderableType] = [_facts(job), Text()]
    parts += [_attempts(attempts) if attempts else Text("attempts  none yet", style="dim"), Text()]
    if job.get("error"):
        parts += [_error(job["error"]), Text()]
    if job.get("result") is not None:
        parts += [Text("result", style="bold"), JSON(json.dumps(job["result"])), Text()]
    artifacts = [(name.removeprefix("artifact:"), link) for name, link in job["links"].items()
                 if name.startswith("artifact:")]
    if artifacts:
        grid = Table.grid(padding=(0, 2))
        for name, link in artifacts:
            grid.add_row(Text(name), Text(link))
        parts += [Text("artifacts", style="bold"), grid, Text()]
    notifications = job.get("notifications") or []
    parts.append(_emails(notifications) if notifications else Text("emails  none", style="dim"))
    return Group(*parts)
