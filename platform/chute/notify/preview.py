"""``chute preview-email``: an edited template rendered with sample data, before any real job uses it."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from chute.models import utcnow
from chute.notify.message import Mail, compose, message_id_for
from chute.notify.templates import Templates


def sample_context(event: str, handler: str | None, public_url: str, recipient: str) -> dict[str, Any]:
    """What a template sees for a job of ``handler`` that ended with ``event``: the same keys a real
    email has (see ``deliveries.snapshot``), with made-up values."""
    finished = utcnow().replace(microsecond=0)
    started = finished - timedelta(seconds=3.4)
    failed = event == "failed"
    result = None if failed else {"rows": 1284, "columns": 6, "header": ["date", "region", "product", "units",
                                                                          "price", "total"], "delimiter": ","}
    job = {
        "id": "0190c8a1f2e3sample0000000000",
        "url": f"{public_url.rstrip('/')}/jobs/0190c8a1f2e3sample0000000000",
        "filename": "sales-2026-q3.csv",
        "content_type": "text/csv",
        "size": 48_213,
        "sha256": "9f2c5d0a4b1e7c3f8a6d2b0e9c1f4a7d3b8e6c2a5f0d9b1e4c7a3f6d2b8e0c5a",
        "handler": handler or "csv_stats",
        "status": event,
        "attempts": 3 if failed else 1,
        "max_attempts": 3,
        "created_at": (started - timedelta(seconds=0.2)).isoformat(),
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "duration_seconds": 3.4,
        "result": result,
        "result_json": "" if result is None else json.dumps(result, indent=2),
        # as deliveries.snapshot makes it: no traceback in an email
        "error": {"type": "Error", "message": "line contains NUL", "traceback": ""} if failed else None,
    }
    return {"event": event, "public_url": public_url, "job": job, "recipient": recipient}


def preview(templates: Templates, event: str, handler: str | None, *, mail_from: str, public_url: str,
            recipient: str = "you@example.com") -> Mail:
    context = sample_context(event, handler, public_url, recipient)
    rendered = templates.render(event, handler, context)
    message_id = message_id_for(context["job"]["id"], event, recipient, 1, mail_from)
    return compose(mail_from=mail_from, recipient=recipient, subject=rendered.subject, text=rendered.text,
                   html=rendered.html, message_id=message_id, date=utcnow(),
                   headers={"X-Chute-Job": context["job"]["id"], "X-Chute-Event": event})
