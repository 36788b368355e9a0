"""``chute new-handler``: a handler module in the shape of the shipped ones and a test that passes as
written, after the checks the registry would make at start (so a scaffold never stops Chute).

Where the files go: the handler into ``CHUTE_HANDLERS`` (default ``handlers``); its test into
``tests/handlers`` of the project that holds that folder, which is the nearest folder above it with a
``pyproject.toml`` (else the folder right above it), unless ``--tests`` says otherwise. What is written
passes the project's ``ruff check`` and ``pytest`` as it is: the tests of this module run both on it."""

from __future__ import annotations

import builtins
import keyword
import re
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

from chute.errors import ChuteError, HandlerConflict
from chute.registry import HandlerSpec, Registry, handler, load_handlers, spec_of
from chute.sniff import CONTAINERS, detect, is_textual

__all__ = ["Plan", "ScaffoldRefused", "new_handler", "plan", "project_of", "render_handler", "render_test", "shown",
           "write"]

_MIME = re.compile(r"^(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)$")
_EXTENSION = re.compile(r"^\.[a-z0-9][a-z0-9_+-]*(\.[a-z0-9][a-z0-9_+-]*)*$")
#: names the written module binds itself: a handler by one of them would shadow it
TEMPLATE_NAMES = frozenset({"annotations", "Context", "Upload", "handler", "retry", "CHUNK"})
#: ruff's line-length in pyproject.toml
LINE = 120
TEXT_SAMPLE = b"A first line\nand a second one.\n"
#: bytes no format's magic number starts with (a NUL: not text either), so the declared type or the
#: extension routes it
BINARY_SAMPLE = b"\x00CHUTE sample\x00\x01\x02\x03"


class ScaffoldRefused(ChuteError):
    """Why ``chute new-handler`` wrote nothing."""


@dataclass(frozen=True)
class Plan:
    """What will be written, once every check has passed."""

    name: str
    mime: str
    extensions: tuple[str, ...]
    handler_path: Path
    test_path: Path
    #: the concrete type the test's sample is uploaded as (``mime`` itself unless it is a pattern)
    sample_type: str
    #: the test uploads the sample by its name alone (its extension routes it); else declaring its type
    by_name: bool = False

    @property
    def text(self) -> bool:
        return is_textual(self.sample_type)

    @property
    def sample(self) -> bytes:
        return TEXT_SAMPLE if self.text else BINARY_SAMPLE

    @property
    def sample_name(self) -> str:
        return "sample" + (self.extensions[0] if self.extensions else "")

    @property
    def result(self) -> dict[str, int]:
        """What the written handler returns for the sample (the written test asserts it)."""
        if self.text:
            return {"lines": self.sample.count(b"\n"), "characters": len(self.sample.decode())}
        return {"bytes": len(self.sample)}


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it (as the user typed it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def project_of(handlers: Path) -> Path:
    """The project a handlers folder belongs to: the nearest folder above it with a pyproject.toml,
    else the folder that holds it."""
    above = handlers.resolve().parent
    return next((d for d in (above, *above.parents) if (d / "pyproject.toml").is_file()), above)


def check_name(name: str) -> None:
    if not name.isidentifier():
        raise ScaffoldRefused(f"{name!r} is not a Python identifier: the name is the handler's function and its "
                              f"module's (letters, digits and _, not starting with a digit), like markdown_headings")
    if keyword.iskeyword(name):
        raise ScaffoldRefused(f"{name!r} is a Python keyword: it cannot name a function")
    if name.startswith(("_", "test_")):
        raise ScaffoldRefused(f"{name!r}: the handler loader skips modules whose name starts with _ or test_, so "
                              f"this handler would never load")
    if hasattr(builtins, name):
        raise ScaffoldRefused(f"{name!r} would shadow the built-in {name}() in its module: choose another name")
    if name in TEMPLATE_NAMES:
        names = ", ".join(sorted(TEMPLATE_NAMES))
        raise ScaffoldRefused(f"{name!r} would shadow one of the module's own names ({names})")


def check_mime(mime: str) -> str:
    normalised = mime.strip().lower()
    if not _MIME.match(normalised) or (normalised.startswith("*/") and normalised != "*/*"):
        raise ScaffoldRefused(f"{mime!r} is not a MIME type: give type/subtype, like text/markdown (or a pattern "
                              f"like image/*)")
    return normalised


def check_extensions(extensions: list[str]) -> tuple[str, ...]:
    found: list[str] = []
    for ext in extensions:
        normalised = "." + ext.strip().lower().removeprefix(".")
        if not _EXTENSION.match(normalised):
            raise ScaffoldRefused(f"{ext!r} is not a file extension: give one like .md")
        if normalised not in found:
            found.append(normalised)
    return tuple(found)


def _where(spec: HandlerSpec, handlers: Path) -> str:
    """A handler's file, as the user knows it (``handlers/csv.py``)."""
    module = getattr(spec.func, "__module__", "")
    rel = module.split(".", 1)[1].replace(".", "/") + ".py" if "." in module else module
    return shown(handlers / rel)


def _existing(handlers: Path) -> Registry:
    try:
        return load_handlers(handlers)
    except ChuteError as exc:  # the folder does not load: Chute would not start either
        raise ScaffoldRefused(f"the handlers in {shown(handlers)} do not load, so the new one cannot be checked "
                              f"against them: {exc}") from None


def plan(name: str, mime: str, extensions: list[str], handlers: Path, tests: Path | None = None) -> Plan:
    """Every check, before anything is written: the name, the type, the extensions, the files, and
    what the handlers already loaded there claim."""
    check_name(name)
    mime = check_mime(mime)
    exts = check_extensions(extensions)
    handler_path = handlers / f"{name}.py"
    test_path = (tests if tests is not None else project_of(handlers) / "tests" / "handlers") / f"test_{name}.py"
    for path in (handler_path, test_path):
        if path.exists():
            raise ScaffoldRefused(f"{shown(path)} already exists: not overwritten (remove it, or choose another name)")
    registry = _existing(handlers)
    for spec in registry:
        if name in (spec.name, spec.func.__name__):
            raise ScaffoldRefused(f"{name} is already a handler ({_where(spec, handlers)}): choose another name")
        for claimed in spec.types:
            if claimed == mime:
                raise ScaffoldRefused(f"{mime} is claimed by {spec.name} ({_where(spec, handlers)}): two handlers "
                                      f"claiming one type at one specificity and Chute would not start")
        clash = sorted(set(spec.extensions) & set(exts))
        if clash:
            raise ScaffoldRefused(f"{clash[0]} is claimed by {spec.name} ({_where(spec, handlers)}): two handlers "
                                  f"claiming one extension and Chute would not start")
    major = mime.partition("/")[0]
    sample_type = mime if "*" not in mime else f"{'application' if major == '*' else major}/x-chute-sample"
    made = Plan(name, mime, exts, handler_path, test_path, sample_type)
    return _routed(made, registry, handlers)


def _routed(made: Plan, registry: Registry, handlers: Path) -> Plan:
    """The registry as it will be at start, and how the written test's sample reaches the new handler in
    it: by its extension alone when that routes it (whatever generic type a client sends), else with its
    type declared."""

    def stand_in() -> None:
        """The new handler, as the registry will see it."""

    stand_in.__name__ = stand_in.__qualname__ = made.name
    stand_in.__module__ = f"chute_handlers.{made.name}"
    try:
        future = Registry([*registry, spec_of(handler(made.mime, extensions=made.extensions)(stand_in))])
    except HandlerConflict as exc:
        raise ScaffoldRefused(f"Chute would not start with it: {exc}") from None

    def goes_to(declared: str) -> HandlerSpec | None:
        detected = detect(made.sample, made.sample_name, declared, future.extension_types)
        return future.route(detected.mime, CONTAINERS)

    if made.extensions and getattr(goes_to("application/octet-stream"), "name", None) == made.name:
        return replace(made, by_name=True)
    routed = goes_to(made.sample_type)
    if routed is None or routed.name != made.name:
        other = f"{routed.name} ({_where(routed, handlers)})" if routed else "no handler"
        raise ScaffoldRefused(f"an upload of {made.sample_type} would go to {other}, not to {made.name}")
    return made


HANDLER = """\
{docstring}

from __future__ import annotations

from chute import Context, Upload, handler, retry
{constants}

{decorator}
@retry(attempts=3, backoff=2.0, on=(OSError,))  # 3 runs in all for an OSError; raise Reject("why") to fail at once
def {name}(upload: Upload, ctx: Context) -> dict[str, object]:
{doc}
{body}"""

TEXT_BODY = """\
    lines = characters = 0
    with upload.open("rt", encoding="utf-8", errors="replace") as f:  # a read-only view of the stored file
        for line in f:
            lines += 1
            characters += len(line)
    ctx.log.info("counted %d lines", lines)
    return {"lines": lines, "characters": characters}
"""

BINARY_BODY = """\
    size = 0
    with upload.open("rb") as f:  # a read-only view of the stored file
        while chunk := f.read(CHUNK):
            size += len(chunk)
    ctx.log.info("read %d bytes", size)
    return {"bytes": size}
"""


def docstring(text: str, indent: str = "") -> str:
    """A docstring wrapped to the project's line length (ruff's E501 covers docstrings too)."""
    unbroken = text.replace("`chute new-handler`", "`chute\u00a0new-handler`")  # textwrap breaks on ASCII spaces
    wrapped = textwrap.fill(f'"""{unbroken}"""', LINE - len(indent), break_on_hyphens=False).replace("\u00a0", " ")
    return textwrap.indent(wrapped, indent)


def call(function: str, args: list[str], indent: str = "") -> str:
    """``function(a, b)`` on one line when it fits, else one argument a line."""
    one = f"{indent}{function}({', '.join(args)})"
    if len(one) <= LINE:
        return one
    return f"{indent}{function}(\n" + "".join(f"{indent}    {a},\n" for a in args) + f"{indent})"


def render_handler(made: Plan) -> str:
    """The handler module: the shipped handlers' shape (docstring, imports, ``@handler``, a typed function
    returning what JSON can hold), streaming its file so a large one costs no memory."""
    args = [repr_str(made.mime)]
    if made.extensions:
        args.append(f"extensions=[{', '.join(repr_str(e) for e in made.extensions)}]")
    what = "lines and characters, read line by line" if made.text else "size, read a chunk at a time"
    title = f"Handles {made.mime}" + (f" ({', '.join(made.extensions)})" if made.extensions else "")
    return _fits(HANDLER.format(
        docstring=docstring(f"{title}. Scaffolded by `chute new-handler`: make the body what this handler is for, "
                            f"and its test (tests/handlers/test_{made.name}.py) what it should answer."),
        constants="" if made.text else "\nCHUNK = 1024 * 1024\n", decorator=call("@handler", args), name=made.name,
        doc=docstring(f"For now, reports the file's {what}; replace this with what the handler is for.", "    "),
        body=TEXT_BODY if made.text else BINARY_BODY))


TEST = """\
{docstring}

from __future__ import annotations

from chute.testing import ChuteApp, run_handler

SAMPLE = {sample}
EXPECTED = {expected}


def test_it_answers_for_a_sample() -> None:
{run}


def test_an_upload_of_its_type_is_processed_by_it(chute_app: ChuteApp) -> None:
{upload}
    assert job["handler"] == {name}
    chute_app.drain()  # runs the real worker loop over the queued job
    done = chute_app.job(job["id"])
    assert done["status"] == "processed", done["error"]
    assert done["result"] == EXPECTED
"""

UPLOAD_BY_NAME = """\
    job = chute_app.upload(SAMPLE, {filename})"""

UPLOAD_BY_TYPE = """\
    # no extension of its own says what the file is: the upload declares its type, as a client would
    sample = ({filename}, SAMPLE, {sample_type})
    response = chute_app.client.post("/uploads", files={{"file": sample}}, headers=chute_app.headers)
    assert response.status_code == 202, response.text
    job = response.json()"""


def render_test(made: Plan) -> str:
    """Its test: the handler called as a worker would, and an upload drained through the real worker."""
    filename = repr_str(made.sample_name)
    upload = (UPLOAD_BY_NAME.format(filename=filename) if made.by_name
              else UPLOAD_BY_TYPE.format(filename=filename, sample_type=repr_str(made.sample_type)))
    expected = "{" + ", ".join(f"{repr_str(k)}: {v}" for k, v in made.result.items()) + "}"
    run = call("assert run_handler", [repr_str(made.name), "SAMPLE", filename], "    ") + " == EXPECTED"
    return _fits(TEST.format(
        docstring=docstring(f"handlers/{made.name}.py: run as a worker runs it (run_handler), and end to end "
                            f"through the API (chute_app)."),
        sample=repr_bytes(made.sample), expected=expected, run=run, name=repr_str(made.name), upload=upload))


def _fits(source: str) -> str:
    """What the project's ruff allows: no line past its length (a very long name or type could make one)."""
    long = [line for line in source.splitlines() if len(line) > LINE]
    if long:
        raise ScaffoldRefused(f"the name or the type is too long to write within {LINE} columns: {long[0].strip()}")
    return source


def repr_str(value: str) -> str:
    """A string literal in double quotes, as the project writes them."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def repr_bytes(value: bytes) -> str:
    text = repr(value)
    return 'b"' + text[2:-1].replace('"', '\\"') + '"' if text.startswith("b'") and '"' not in text else text


def write(made: Plan) -> list[Path]:
    """Both files, each created only if it still does not exist (never overwritten, even in a race)."""
    made.test_path.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for path, content in ((made.handler_path, render_handler(made)), (made.test_path, render_test(made))):
            with path.open("x", encoding="utf-8") as f:
                f.write(content)
            written.append(path)
    except FileExistsError as exc:
        for path in written:
            path.unlink()
        raise ScaffoldRefused(f"{shown(Path(str(exc.filename)))} already exists: not overwritten") from None
    return written


def new_handler(name: str, mime: str, extensions: list[str], handlers: Path, tests: Path | None = None) -> list[Path]:
    """Check, then write the handler and its test; returns the paths written."""
    return write(plan(name, mime, extensions, handlers, tests))
