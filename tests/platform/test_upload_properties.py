"""Properties of the upload path, over inputs Hypothesis makes up: a cleaned file name never escapes
storage or carries an invisible or line-breaking character, and a random multipart-ish body is always
answered 202 or 4xx, never 5xx, and never leaves a file without its job row."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from chute.errors import JobNotFound
from chute.storage import MAX_NAME, clean_filename
from chute.testing import ChuteApp

DROPPED = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}
#: characters with a meaning to paths, headers, terminals or bidi rendering
SPECIALS = ["/", "\\", ".", "..", " ", "\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\u0085", "\u00a0", "\u2028",
            "\u2029", "\u202e", "\u2066", "\u200b", "\ufeff", "\ud800", "\ue000", "e\u0301", "\u3000", ":", "~"]
names = st.lists(st.one_of(st.characters(exclude_categories=()), st.sampled_from(SPECIALS),
                           st.text(min_size=50, max_size=150)), max_size=60).map("".join)


# --- (a) file-name cleaning --------------------------------------------------------------------------
@settings(max_examples=400, deadline=None, database=None)
@given(names)
@example("report\u2028Bcc: x.csv")
@example("a\u2029b.txt")
@example(". ..hidden")
@example("x" * 300 + " .csv")
def test_a_cleaned_name_is_one_safe_visible_bounded_component(raw: str) -> None:
    name = clean_filename(raw)
    assert 0 < len(name) <= MAX_NAME
    assert "/" not in name and "\\" not in name
    assert name not in {".", ".."} and not name.startswith(".")
    assert not [ch for ch in name if unicodedata.category(ch) in DROPPED], name
    assert name == name.strip()
    name.encode("utf-8")  # no lone surrogate: it can be stored, logged and mailed
    assert Path(name).name == name and len(Path(name).parts) == 1
    assert clean_filename(name) == name, "cleaning is idempotent (artifacts are found by their cleaned name)"


# --- (b) the upload parser ---------------------------------------------------------------------------
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
boundaries = st.one_of(st.just("XYZ"), st.text(BCHARS, min_size=1, max_size=90),
                       st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20))
raw_bytes = st.one_of(st.binary(max_size=300), st.sampled_from([b"[" * 3000 + b"\n[" + b"[" * 3000,
                                                              b"a,b\n1,2\n", b"\x89PNG\r\n\x1a\n", b"{}\n{}\n"]))
dispositions = st.one_of(
    st.tuples(st.sampled_from(["file", "notify", "handler", "other"]),
              st.one_of(st.none(), st.binary(max_size=60), st.sampled_from([b"a.csv", b"x.json", b"", b"a\x00b"])))
    .map(lambda nf: b'Content-Disposition: form-data; name="' + nf[0].encode() + b'"'
         + (b'; filename="' + nf[1] + b'"' if nf[1] is not None else b"")),
    HEADER_TEXT.map(lambda t: ("Content-Disposition: " + t).encode()),
    st.just(b"Content-Type: text/plain"),
    st.binary(max_size=40),
)
extra_headers = st.lists(st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
    .map(lambda t: b"Content-Type: " + t.encode()),
    st.binary(max_size=30), st.just(b"X-Big: " + b"h" * 20_000)), max_size=2)
parts = st.tuples(dispositions, extra_headers, raw_bytes).map(
    lambda p: b"\r\n".join([p[0], *p[1]]) + b"\r\n\r\n" + p[2])
field_values = st.sampled_from([b"text_stats", b"csv_stats", b"nope", b"a@example.com", b"a@example.com,b@x.org",
                                b"not an email", b"\x00", b"v" * 70_000])


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(Content-Type, body): half the time a well-framed body of plausible parts (most of them
    accepted), otherwise anything near it: random parts and headers, cut short or spliced."""
    framed = draw(st.booleans())
    boundary = draw(st.text(BCHARS.strip(), min_size=8, max_size=70) if framed else boundaries).encode()
    fields = field_values.map(lambda v: b'Content-Disposition: form-data; name="handler"\r\n\r\n' + v)
    chosen = draw(st.lists(fields if framed else st.one_of(parts, fields), max_size=2 if framed else 5))
    if framed or draw(st.booleans()):
        at = draw(st.integers(0, len(chosen)))
        chosen.insert(at, b'Content-Disposition: form-data; name="file"; filename="' + draw(st.sampled_from(
            [b"a.txt", b"b.csv", b"c.json", b"blob", b"x" * 300 + b".txt"])) + b'"\r\n\r\n' + draw(raw_bytes))
    delimiter = b"--" + boundary + b"\r\n"
    content = b"".join(delimiter + p + b"\r\n" for p in chosen)
    if framed or draw(st.booleans()):
        content += b"--" + boundary + b"--\r\n"
    if not framed and draw(st.booleans()) and content:
        content = content[: draw(st.integers(0, len(content)))]
    if not framed and draw(st.booleans()):
        at = draw(st.integers(0, len(content)))
        content = content[:at] + draw(st.binary(max_size=20)) + content[at:]
    wellformed = st.sampled_from([b"multipart/form-data; boundary=" + boundary,
                                  b'multipart/form-data; boundary="' + boundary + b'"'])
    ctype = draw(wellformed if framed else st.one_of(
        wellformed, HEADER_TEXT.map(lambda t: ("multipart/form-data; " + t).encode()),
        st.just(b"multipart/form-data"), st.just(b"application/octet-stream")))
    return ctype, content


def orphans(app: ChuteApp) -> list[Path]:
    found = []
    for path in app.settings.files_dir.rglob("*"):
        if path.is_file():
            try:
                app.jobs.get(path.name)
            except JobNotFound:
                found.append(path)
    return found


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                 HealthCheck.too_slow])
@given(bodies())
@example((b"multipart/form-data; boundary=" + b"b" * 300, b"--" + b"b" * 300 + b"\r\n"))
@example((b"multipart/form-data; boundary=XYZ", b'--XYZ\r\nContent-Disposition: form-data; name="file"; '
          b'filename="deep.json"\r\n\r\n' + b"[" * 3000 + b"\n[" + b"[" * 3000 + b"\r\n--XYZ--\r\n"))
@example((b"multipart/form-data; boundary=XYZ",
          b'--XYZ\r\nContent-Disposition: form-data; name="file"\r\n\r\nplain\r\n--XYZ--\r\n'))
def test_a_random_body_is_202_or_4xx_and_never_leaves_an_orphan(chute_app: ChuteApp,
                                                                 upload: tuple[bytes, bytes]) -> None:
    ctype, content = upload
    response = chute_app.client.post("/uploads", content=content, headers={"content-type": ctype})
    event(f"status {response.status_code}")
    assert response.status_code == 202 or 400 <= response.status_code < 500, response.text
    if response.status_code != 202:
        assert isinstance(response.json()["detail"], str | list)
    else:
        assert chute_app.jobs.get(response.json()["id"]).status == "pending"
    assert orphans(chute_app) == []
