"""The database as the queue, on SQLite and PostgreSQL: a due row goes to one worker only, a
reservation nobody claims comes back, and workers sharing one database share the work."""

from __future__ import annotations

import gc
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chute.api import create_app
from chute.executor import InlineExecutor
from chute.runtime import Runtime
from chute.settings import Settings
from chute.testing import KitClock
from chute.worker import Worker

HANDLERS = Path(__file__).resolve().parent / "kit_handlers"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_database")
        return url
    return f"sqlite:///{tmp_path / 'chute.db'}"


@pytest.fixture
def make_runtime(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Runtime]]:
    made: list[Runtime] = []

    def make(**kw: Any) -> Runtime:
        rt = Runtime.build(Settings(var_dir=tmp_path / "var", database_url=database_url, handlers=HANDLERS), **kw)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def upload(rt: Runtime, count: int, ext: str = ".txt") -> list[str]:
    with TestClient(create_app(rt, relay=False)) as client:
        return [client.post("/uploads", files={"file": (f"{i}{ext}", b"x")}).json()["id"] for i in range(count)]


def test_concurrent_reservations_never_hand_one_row_to_two_workers(make_runtime: Callable[..., Runtime]) -> None:
    rts = [make_runtime() for _ in range(4)]  # four engines: four processes, as far as the database knows
    ids = upload(rts[0], 60)
    got: dict[int, list[str]] = {}
    start = threading.Barrier(len(rts))

    def take(i: int) -> None:
        start.wait()
        mine: list[str] = []
        while reserved := rts[i].jobs.reserve(5, visibility=60):
            mine += [job_id for job_id, _ in reserved]
        got[i] = mine

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(rts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    taken = [job_id for mine in got.values() for job_id in mine]
    assert sorted(taken) == sorted(ids), "every row reserved exactly once"


def test_a_reservation_nobody_claims_is_due_again_after_its_visibility(make_runtime: Callable[..., Runtime]) -> None:
    clock = KitClock()
    rt = make_runtime(clock=clock)
    [job_id] = upload(rt, 1)
    assert [j for j, _ in rt.jobs.reserve(10, visibility=30)] == [job_id]
    assert rt.jobs.reserve(10, visibility=30) == [], "reserved: no other worker gets it meanwhile"
    clock.advance_to(clock() + timedelta(seconds=29))
    assert rt.jobs.reserve(10, visibility=30) == []
    clock.advance_to(clock() + timedelta(seconds=2))
    assert [j for j, _ in rt.jobs.reserve(10, visibility=30)] == [job_id], "its worker died: due again"


def test_a_requeued_reservation_is_due_at_once(make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime()
    [job_id] = upload(rt, 1)
    reserved = rt.jobs.reserve(10, visibility=300)
    rt.jobs.release(reserved)
    assert [j for j, _ in rt.jobs.reserve(10, visibility=300)] == [job_id]


def test_two_workers_on_one_database_share_the_work_and_run_each_job_once(
        make_runtime: Callable[..., Runtime], wait: Any) -> None:
    rts = [make_runtime() for _ in range(2)]
    workers = [Worker(rt.jobs, rt.source(1), rt.registry, rt.storage, InlineExecutor(rt.registry), concurrency=1,
                      scratch=rt.scratch, describe="test") for rt in rts]
    ids = upload(rts[0], 24, ".nap")
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        wait(lambda: all(rts[0].jobs.get(j).status.value == "processed" for j in ids), 30, 0.05,
             message="every job processed")
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(10)
    assert [rts[0].jobs.get(j).attempts for j in ids] == [1] * 24
    assert sum(w.started for w in workers) == 24, "no job started twice"
    assert all(w.started > 0 for w in workers), [w.started for w in workers]


def test_an_upload_through_another_runtime_wakes_a_waiting_fetch_before_its_poll(database_url: str,
                                                                               tmp_path: Path) -> None:
    """``chute api`` and ``chute worker`` share only the database: the API's doorbell wakes the
    worker's fetch at once, where the worker alone would see the job at its next poll (30 s here)."""
    settings = Settings(var_dir=tmp_path / "var", database_url=database_url, handlers=HANDLERS, poll_interval=30.0)
    api, worker = Runtime.build(settings), Runtime.build(settings)
    source = worker.source(1)
    try:
        got: list[tuple[float, list[str]]] = []

        def fetch() -> None:
            started = time.monotonic()
            while time.monotonic() - started < 30:
                messages = source.fetch(1, 30.0)
                if messages:
                    got.append((time.monotonic() - started, [m.job_id for m in messages]))
                    return

        waiting = threading.Thread(target=fetch)
        waiting.start()
        time.sleep(0.3)  # let the fetch start waiting: it is the wait that must be cut short
        (job_id,) = upload(api, 1)
        waiting.join(35)
        assert got and got[0][1] == [job_id]
        assert got[0][0] < 5.0, f"the fetch waited {got[0][0]:.1f}s: it was not woken"
    finally:
        source.close()
        api.close()
        worker.close()


def test_the_sources_of_one_runtime_share_one_doorbell_socket_which_close_frees(
        database_url: str, tmp_path: Path, wait: Callable[..., Any]) -> None:
    """A runtime asked for several sources (a worker started again) binds one socket, not one each,
    and closing the runtime frees it: nothing is left for the garbage collector to complain about."""
    settings = Settings(var_dir=tmp_path / "var", database_url=database_url, handlers=HANDLERS)
    rt = Runtime.build(settings)
    sources = [rt.source(1) for _ in range(3)]  # as a worker started again in one runtime asks
    assert rt.doorbell is not None
    slot0 = rt.doorbell._address(0)

    def taken(address: bytes) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.bind(address)
            return False
        except OSError:
            return True
        finally:
            probe.close()

    assert taken(slot0) and not taken(rt.doorbell._address(1)), "one socket for the three sources"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for source in sources:
            source.close()
        rt.close()
        wait(lambda: not taken(slot0), 5, message="the doorbell's socket to be closed")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
