"""The page shells and their static files: HTML with no data in it, so they need no key (the script
asks for one when the data routes answer 401). Everything a user sent reaches the page through the
script, as text (``textContent``), never as markup; the Content-Security-Policy allows no inline
script and no other origin, so even a slip there would not run."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from jinja2 import Environment, FileSystemLoader

from chute import __version__

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
#: the files served under /ui/static/, fixed at import: a name is looked up, never joined to a path
FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)
_templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
                         lstrip_blocks=True)


def _page(template: str, **context: object) -> HTMLResponse:
    html = _templates.get_template(template).render(version=__version__, **context)
    return HTMLResponse(html, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


@router.get("/")
def jobs_page() -> HTMLResponse:
    """Upload, the live job list, the chart."""
    return _page("jobs.html.j2", page="jobs")


@router.get("/ui/jobs/{job_id}")
def job_page(job_id: str) -> HTMLResponse:
    """One job, from upload to email (its data comes from GET /jobs/{id}, with the key)."""
    if not _JOB_ID.fullmatch(job_id):
        raise HTTPException(404, "no such page")
    return _page("job.html.j2", page="job", job_id=job_id)


@router.get("/ui/handlers")
def handlers_page() -> HTMLResponse:
    return _page("handlers.html.j2", page="handlers")


@router.get("/ui/static/{name}")
def static(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise HTTPException(404, "no such file")
    return FileResponse(path, media_type=TYPES.get(path.suffix, "application/octet-stream"),
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
