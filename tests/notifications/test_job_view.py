"""A job shows its emails, and an operator can send an uncertain one again."""

from __future__ import annotations

from sqlalchemy import update

from chute.models import Delivery, DeliveryStatus
from chute.testing import ChuteApp


def test_a_job_lists_its_emails_with_their_state(chute_app: ChuteApp) -> None:
    job = chute_app.upload(b"a,b\n1,2\n", "x.csv", notify="ann@example.com")
    assert chute_app.job(job["id"])["notifications"] == []
    chute_app.drain()
    mails = chute_app.job(job["id"])["notifications"]
    assert [(m["event"], m["recipient"], m["status"]) for m in mails] == [("processed", "ann@example.com", "sent")]
    assert mails[0]["sent_at"] and mails[0]["message_id"] == chute_app.outbox[0]["Message-ID"]


def test_an_uncertain_email_is_sent_again_only_when_asked(chute_app: ChuteApp) -> None:
    job = chute_app.upload(b"a,b\n1,2\n", "x.csv", notify="ann@example.com")
    chute_app.drain()
    assert chute_app.client.post(f"/jobs/{job['id']}/notifications/retry").status_code == 409
    with chute_app.runtime.db.write() as session:
        session.execute(update(Delivery).where(Delivery.job_id == job["id"]).values(status=DeliveryStatus.UNCERTAIN))
    chute_app.drain()
    assert len(chute_app.outbox) == 1, "an uncertain email is not resent on its own"
    response = chute_app.client.post(f"/jobs/{job['id']}/notifications/retry")
    assert response.status_code == 202
    assert [m["status"] for m in response.json()] == ["pending"]
    chute_app.drain()
    assert len(chute_app.outbox) == 2
    assert chute_app.outbox[0]["Message-ID"] == chute_app.outbox[1]["Message-ID"], "the same Message-ID"
    assert chute_app.client.post("/jobs/0000000000000000000000000000beef/notifications/retry").status_code == 404
