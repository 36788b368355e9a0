"""The email templates: Jinja2, read from ``CHUTE_TEMPLATES`` (``notifications/templates``).

Each event has three files: ``<event>.subject.j2``, ``<event>.txt.j2`` and ``<event>.html.j2``. A file in
``<templates>/<handler name>/`` overrides its namesake for that handler alone, file by file: the loader's
search path is ``[<templates>/<handler>, <templates>]``, so whatever the handler's folder lacks comes from
the shared one (and ``{% extends %}``/``{% include %}`` resolve the same way).

Choices, each for a reason:
- HTML is autoescaped (Jinja2's default is off; starlette's ``templating.py`` turns it on the same way):
  a file named ``<script>.csv`` shows as text in the HTML part. The subject and the text part are not
  HTML, so they are not escaped; ``message.py`` keeps control characters out of the subject.
- ``StrictUndefined``: a typo in an operator's template is an error naming the variable, not an empty
  string in a thousand emails. The notifier keeps such an email pending (with the error on its row)
  and ``chute preview-email`` shows the error at once.
- ``auto_reload``: an edited template is used by the emails rendered from a second later on, without
  restarting anything (the files are looked at again at most once a second, not for every email).
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from threading import Lock
from typing import Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)

from chute.errors import ConfigError

EVENTS = ("processed", "failed")
PARTS = ("subject", "txt", "html")
#: a handler name that can safely be a folder name (anything else just gets the shared templates)
_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class TemplateProblem(Exception):
    """A template is missing or does not render; the message names the file."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def filesize(size: int | float | None) -> str:
    """``1536`` → ``1.5 KiB``: what a person reads in an email."""
    if size is None:
        return "unknown size"
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: int | float | None) -> str:
    """``0.25`` → ``250 ms``, ``75`` → ``1 min 15 s``."""
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@functools.lru_cache(maxsize=1024)
def when(value: str | datetime | None) -> str:
    """An ISO timestamp (as stored on the row) → ``2026-11-29 09:22:15 UTC``."""
    if value is None:
        return "unknown"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


class Templates:
    """One Jinja2 environment per handler folder, built on first use and kept."""

    def __init__(self, root: Path, recheck: float = 1.0) -> None:
        self.root = Path(root)
        self.recheck = recheck
        self._envs: dict[str, Environment] = {}
        self._loaded: dict[tuple[str | None, str], tuple[float, list[Template]]] = {}
        self._lock = Lock()

    def check(self) -> None:
        """At start-up: every shared template is there (a handler folder may hold any subset)."""
        if not self.root.is_dir():
            raise ConfigError(f"invalid setting CHUTE_TEMPLATES: {str(self.root)!r} is not a directory "
                              "(it should hold processed.subject.j2 and the other email templates)")
        missing = [name for event in EVENTS for name in template_names(event) if not (self.root / name).is_file()]
        if missing:
            raise ConfigError(f"invalid setting CHUTE_TEMPLATES: {str(self.root)!r} lacks {', '.join(missing)}")

    def folder_for(self, handler: str | None) -> Path | None:
        """The handler's own folder, when it has one."""
        if handler and _FOLDER.match(handler):
            folder = self.root / handler
            if folder.is_dir():
                return folder
        return None

    def environment(self, handler: str | None) -> Environment:
        folder = self.folder_for(handler)
        key = folder.name if folder is not None else ""
        env = self._envs.get(key)
        if env is None:
            with self._lock:
                env = self._envs.get(key)
                if env is None:
                    env = self._envs[key] = make_environment([folder, self.root] if folder else [self.root])
        return env

    def render(self, event: str, handler: str | None, context: dict[str, Any]) -> Rendered:
        parts = zip(template_names(event), self._load(event, handler), strict=True)
        return Rendered(*(_render(name, template, context) for name, template in parts))

    def _load(self, event: str, handler: str | None) -> list[Template]:
        """The three templates, compiled; looked up again (a stat per file) at most every ``recheck``
        seconds, so a busy notifier does not stat six files per email."""
        if event not in EVENTS:
            raise TemplateProblem(f"no templates for the event {event!r}; events are {', '.join(EVENTS)}")
        key = (handler, event)
        now = time.monotonic()
        hit = self._loaded.get(key)
        if hit is not None and now - hit[0] < self.recheck:
            return hit[1]
        env = self.environment(handler)
        templates = []
        for name in template_names(event):
            try:
                templates.append(env.get_template(name))
            except TemplateNotFound:
                raise TemplateProblem(f"{name} is in neither {self.root / (handler or '')} nor {self.root}") from None
            except TemplateSyntaxError as exc:
                raise TemplateProblem(f"{exc.filename or name} line {exc.lineno}: {exc.message}") from exc
        self._loaded[key] = (now, templates)
        return templates

    def source_of(self, event: str, handler: str | None) -> dict[str, Path]:
        """Which file each part comes from: for ``chute preview-email``."""
        folder = self.folder_for(handler)
        out = {}
        for name in template_names(event):
            own = folder / name if folder is not None else None
            out[name] = own if own is not None and own.is_file() else self.root / name
        return out


def _render(name: str, template: Template, context: dict[str, Any]) -> str:
    try:
        return template.render(context)
    except Exception as exc:  # UndefinedError, or a filter given the wrong type: the template's fault
        raise TemplateProblem(f"{name}: {type(exc).__name__}: {exc}") from exc


def template_names(event: str) -> list[str]:
    return [f"{event}.{part}.j2" for part in PARTS]


def make_environment(search_path: list[Path]) -> Environment:
    env = Environment(
        loader=FileSystemLoader([str(p) for p in search_path]),
        # ".html.j2" must be named: select_autoescape compares the end of the name, and ours end in ".j2".
        autoescape=select_autoescape(enabled_extensions=("html.j2", "htm.j2", "html", "htm", "xml"),
                                     default_for_string=False, default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=True,
    )
    env.filters["filesize"] = filesize
    env.filters["duration"] = duration
    env.filters["when"] = when
    return env
