"""The notifier beside a real worker (embedded broker, handlers in child processes, the API in front):
mail goes out on its own, and a mail server that hangs holds up no job."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chute.api import create_app
from chute.models import DeliveryStatus
from chute.runtime import Runtime
from chute.settings import Settings

pytestmark = pytest.mark.slow


@contextmanager
def running(rt: Runtime) -> Iterator[tuple[TestClient, Any]]:
    """API (with its outbox relay), one worker thread and the notifier thread, as `chute serve` runs them."""
    notifier = rt.notifier()
    notifier.start()
    worker = rt.worker(2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(20), "the worker did not connect"
        with TestClient(create_app(rt)) as client:
            yield client, notifier
    finally:
        worker.stop()
        thread.join(60)
        notifier.stop(grace=0.5)
        rt.close()
    assert not thread.is_alive() and not notifier.running


def statuses(client: TestClient, ids: list[str]) -> set[str]:
    return {client.get(f"/jobs/{i}").json()["status"] for i in ids}


def test_a_finished_job_is_mailed_by_the_notifier_thread(settings_for: Callable[..., Settings], handlers_dir: Path,
                                                         templates_dir: Path, smtp_sink: Any,
                                                         wait: Callable[..., Any]) -> None:
    rt = Runtime.build(settings_for(handlers=handlers_dir, templates=templates_dir, smtp_url=smtp_sink.url))
    with running(rt) as (client, _notifier):
        response = client.post("/uploads", files={"file": ("notes.txt", b"one two\n")},
                               data={"notify": "ann@example.com"})
        assert response.status_code == 202
        job_id = response.json()["id"]
        wait(lambda: len(smtp_sink.received) == 2, 30, 0.05, message="two emails")
        assert statuses(client, [job_id]) == {"processed"}
    assert sorted(r for m in smtp_sink.received for r in m.recipients) == ["ann@example.com", "team@example.com"]
    assert {m.message["X-Chute-Job"] for m in smtp_sink.received} == {job_id}


def test_a_mail_server_that_never_answers_holds_up_no_job(settings_for: Callable[..., Settings],
                                                          handlers_dir: Path, templates_dir: Path,
                                                          silent_port: int, wait: Callable[..., Any]) -> None:
    """The server accepts the connection and says nothing for 60 s: if sending blocked processing, the
    jobs could not finish in the 20 s the test allows."""
    rt = Runtime.build(settings_for(handlers=handlers_dir, templates=templates_dir, smtp_timeout=60.0,
                                    smtp_url=f"smtp://127.0.0.1:{silent_port}"))
    with running(rt) as (client, _notifier):
        ids = [client.post("/uploads", files={"file": (f"f{i}.txt", b"text\n")},
                           data={"notify": "ann@example.com"}).json()["id"] for i in range(3)]
        wait(lambda: statuses(client, ids) == {"processed"}, 20, 0.05, message="the jobs to be processed")
        deliveries = [d for i in ids for d in rt.deliveries.for_job(i)]
        assert len(deliveries) == 6
        assert DeliveryStatus.SENT not in {d.status for d in deliveries}
    # stopping cut the stalled connection off: what it held was given back, not lost
    assert {d.status for i in ids for d in rt.deliveries.for_job(i)} == {DeliveryStatus.PENDING}
