"""Handler specs, the loader that collects them from the handlers path, and routing by specificity."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from chute.errors import HandlerConflict, HandlerImportError, RegistryError
from chute.retry import DEFAULT_POLICY, RETRY_ATTR, RetryPolicy

F = TypeVar("F", bound=Callable[..., Any])
HANDLER_ATTR = "__chute_handler__"
PACKAGE = "chute_handlers"
DEFAULT_TIMEOUT = 300.0
_MIME = re.compile(r"^(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)$")


@dataclass(frozen=True)
class HandlerSpec:
    """What ``@handler`` records; the function itself stays a plain callable."""

    name: str
    types: tuple[str, ...]
    extensions: tuple[str, ...]
    timeout: float
    notify: tuple[str, ...]
    func: Callable[..., Any] = field(compare=False, repr=False)
    #: the address space its process may use, in MiB; None: the worker's default (CHUTE_HANDLER_MEMORY_MB)
    memory_mb: int | None = None

    @property
    def retry(self) -> RetryPolicy:
        policy = getattr(self.func, RETRY_ATTR, None)
        return policy if isinstance(policy, RetryPolicy) else DEFAULT_POLICY

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "types": list(self.types),
            "extensions": list(self.extensions),
            "retry": self.retry.describe(),
            "timeout": self.timeout,
            "memory_mb": self.memory_mb,
            "module": getattr(self.func, "__module__", None),
            "doc": inspect.getdoc(self.func),
        }


def specificity(pattern: str) -> int:
    """2 for ``text/csv``, 1 for ``text/*``, 0 for ``*/*``."""
    major, minor = pattern.split("/")
    return 0 if major == "*" else 1 if minor == "*" else 2


def matches(pattern: str, mime: str) -> bool:
    major, minor = pattern.split("/")
    mime_major, _, mime_minor = mime.partition("/")
    return major in ("*", mime_major) and minor in ("*", mime_minor)


def handler(
    types: str | Sequence[str],
    *,
    extensions: Iterable[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    name: str | None = None,
    notify: Iterable[str] = (),
    memory_mb: int | None = None,
) -> Callable[[F], F]:
    """Mark a function as the handler for one or more MIME types (``"image/*"`` patterns allowed)."""
    wanted = (types,) if isinstance(types, str) else tuple(types)
    normalised = tuple(t.strip().lower() for t in wanted)
    for mime in normalised:
        if not _MIME.match(mime) or (mime.startswith("*/") and mime != "*/*"):
            raise RegistryError(f"{mime!r} is not a MIME type or pattern like 'text/csv' or 'image/*'")
    if not normalised:
        raise RegistryError("@handler needs at least one type")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if timeout <= 0:
        raise RegistryError("timeout must be positive")
    if memory_mb is not None and memory_mb < 64:
        raise RegistryError("memory_mb must be at least 64 (MiB): a Python process needs that much to start")

    def decorate(func: F) -> F:
        spec = HandlerSpec(name or func.__name__, normalised, exts, float(timeout), tuple(notify), func, memory_mb)
        setattr(func, HANDLER_ATTR, spec)
        return func

    return decorate


def spec_of(func: Callable[..., Any]) -> HandlerSpec:
    spec = getattr(func, HANDLER_ATTR, None)
    if not isinstance(spec, HandlerSpec):
        raise RegistryError(f"{func!r} is not decorated with @handler")
    return spec


class Registry:
    """The routing table: handlers by name, and the best handler for a MIME type."""

    def __init__(self, specs: Iterable[HandlerSpec]) -> None:
        self.by_name: dict[str, HandlerSpec] = {}
        claims: dict[str, HandlerSpec] = {}
        ext_claims: dict[str, HandlerSpec] = {}
        for spec in specs:
            if spec.name in self.by_name:
                raise HandlerConflict(f"two handlers are named {spec.name!r}: {_where(self.by_name[spec.name])} "
                                      f"and {_where(spec)}")
            self.by_name[spec.name] = spec
            for mime in spec.types:
                if mime in claims:
                    raise HandlerConflict(f"{_where(claims[mime])} and {_where(spec)} both claim {mime!r}")
                claims[mime] = spec
            for ext in spec.extensions:
                if ext in ext_claims:
                    raise HandlerConflict(f"{_where(ext_claims[ext])} and {_where(spec)} both claim {ext!r}")
                ext_claims[ext] = spec
        self._claims = sorted(claims.items(), key=lambda item: -specificity(item[0]))
        self.extensions = ext_claims
        #: an extension → the concrete type its handler declares first (``.csv`` → ``text/csv``)
        self.extension_types = {ext: next((t for t in spec.types if "*" not in t), "")
                                for ext, spec in ext_claims.items()}

    def __len__(self) -> int:
        return len(self.by_name)

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    def get(self, name: str) -> HandlerSpec | None:
        return self.by_name.get(name)

    def route(self, mime: str, containers: Mapping[str, str] | None = None) -> HandlerSpec | None:
        """The most specific handler whose patterns match ``mime``; a format with no handler of its own
        (only a ``*/*`` catch-all) goes to its container's handler when there is one (``containers``)."""
        found = self._match(mime, 0)
        parent = (containers or {}).get(mime)
        if parent and (found is None or found[0] == 0):
            inherited = self._match(parent, 1)
            if inherited is not None:
                return inherited[1]
        return found[1] if found else None

    def _match(self, mime: str, least: int) -> tuple[int, HandlerSpec] | None:
        for pattern, spec in self._claims:
            if specificity(pattern) >= least and matches(pattern, mime):
                return specificity(pattern), spec
        return None

    def accepted(self) -> list[str]:
        return sorted({mime for mime, _ in self._claims} | set(self.extensions))


def _where(spec: HandlerSpec) -> str:
    module = getattr(spec.func, "__module__", "?")
    return f"{module}.{spec.func.__qualname__}"


def load_handlers(path: Path) -> Registry:
    """Import every module under ``path`` as ``chute_handlers.<name>`` and collect its handlers.

    The modules never go on ``sys.path``, so ``handlers/csv.py`` cannot shadow the ``csv`` module."""
    if not path.is_dir():
        raise RegistryError(f"the handlers path {str(path)!r} is not a directory (CHUTE_HANDLERS)")
    package = _package(path)
    specs: list[HandlerSpec] = []
    for file in sorted(path.rglob("*.py")):
        rel = file.relative_to(path)
        if any(part.startswith(("_", ".")) for part in rel.parts) or file.name.startswith("test_"):
            continue
        module = _import(package, path, rel)
        for value in vars(module).values():
            spec = getattr(value, HANDLER_ATTR, None)
            if isinstance(spec, HandlerSpec) and getattr(value, "__module__", None) == module.__name__:
                specs.append(spec)
    return Registry(specs)


def _package(path: Path) -> types.ModuleType:
    """A fresh ``chute_handlers`` package rooted at ``path`` (a reload replaces the previous one)."""
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(path.resolve())]
    package.__package__ = PACKAGE
    sys.modules[PACKAGE] = package
    return package


def _import(package: types.ModuleType, root: Path, rel: Path) -> types.ModuleType:
    parts = list(rel.with_suffix("").parts)
    name = ".".join([PACKAGE, *parts])
    parent = PACKAGE
    for i, part in enumerate(parts[:-1]):  # sub-folders become sub-packages
        sub = f"{parent}.{part}"
        if sub not in sys.modules:
            module = types.ModuleType(sub)
            module.__path__ = [str((root / Path(*parts[: i + 1])).resolve())]
            module.__package__ = sub
            sys.modules[sub] = module
        parent = sub
    spec = importlib.util.spec_from_file_location(name, root / rel)
    if spec is None or spec.loader is None:
        raise HandlerImportError(f"cannot import {root / rel}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise HandlerImportError(f"{root / rel}: {type(exc).__name__}: {exc}") from exc
    return module
