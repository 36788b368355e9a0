"""Schemathesis over Chute's own OpenAPI schema: every operation, with no keys configured, with keys
and the key sent, and with keys but none sent. No 5xx, and every answer matches the schema (status
code, content type, headers, body). Half the positive cases that name a job name a real one (a
processed CSV with a result), so the answers about real jobs are checked too, not only 404s."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from chute.testing import ChuteApp

ROOT = Path(__file__).resolve().parents[2]
KEY = "fuzz-api-key-0123"
#: examples per operation and mode (every operation in the schema, 3 modes)
EXAMPLES = 50
MODES = ["no keys configured", "key sent", "keys configured, none sent"]
#: checks left out for one operation, each a finding reported and not fixed here (or a false alarm)
KNOWN: dict[str, list[Any]] = {
    # An empty ``notify`` item is taken as "no address" (202) while the schema says every item is an
    # email: the upload path's schema (api/uploads.py UPLOAD_FORM) or its parsing should say the same.
    # And a schema-valid upload may still be refused on rules the schema cannot state: a reserved
    # domain (``x@y.test``) or an unknown ``handler`` name is a 422, a type no handler takes a 415.
    "POST /uploads": [negative_data_rejection, positive_data_acceptance],
    # The cursor is opaque: a string this API did not give out is a 400 by design (documented).
    "GET /jobs": [positive_data_acceptance],
    "GET /board": [positive_data_acceptance],
}


@pytest.fixture(params=MODES)
def fuzz_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
def fuzz_app(tmp_path: Path, fuzz_mode: str) -> Iterator[ChuteApp]:
    app = ChuteApp(tmp_path / "var", handlers=ROOT / "handlers", api_keys=[] if fuzz_mode == MODES[0] else [KEY])
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def seeded_job(fuzz_app: ChuteApp) -> str:
    """A processed job, so that real job answers (result, file, attempts, 409s) meet the schema."""
    headers = {"Authorization": f"Bearer {KEY}"} if fuzz_app.settings.api_keys else {}
    job = fuzz_app.client.post("/uploads", files={"file": ("seed.csv", b"a,b\n1,2\n")}, headers=headers)
    assert job.status_code == 202, job.text
    fuzz_app.drain()
    job_id: str = job.json()["id"]
    return job_id


@pytest.fixture
def fuzz_schema(fuzz_app: ChuteApp, fuzz_mode: str, request: pytest.FixtureRequest) -> Any:
    """The schema the app serves (it differs with keys: security and 401s), the app as its transport."""
    if not hasattr(request.node, "_nodeid"):
        # schemathesis 4.32's fixture-based schemas read Node._nodeid, which pytest 9.2 renamed to _id
        request.node._nodeid = request.node.nodeid
    headers = {"Authorization": f"Bearer {KEY}"} if fuzz_app.settings.api_keys else {}
    # "key sent": the key goes through schemathesis's own auth, so its negative cases may still drop it
    auth = {"auth": {"openapi": {"bearer": {"bearer": KEY}}}} if fuzz_mode == "key sent" else {}
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app.app, headers=headers,
                                          config=schemathesis.Config.from_dict(auth))


schema = schemathesis.pytest.from_fixture("fuzz_schema")
_turn = itertools.count()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_the_api_holds_to_its_schema(case: Any, fuzz_mode: str, seeded_job: str) -> None:
    positive = case.meta is None or case.meta.generation.mode.is_positive
    if positive and "job_id" in case.path_parameters and next(_turn) % 2:
        case.path_parameters["job_id"] = seeded_job
    response = case.call_and_validate(excluded_checks=KNOWN.get(f"{case.method} {case.path}", []))
    sent = response.request.headers.get("Authorization")
    if fuzz_mode == "key sent" and sent == f"Bearer {KEY}":
        assert response.status_code != 401, f"{case.method} {case.formatted_path}: the key was refused"
    if fuzz_mode == "keys configured, none sent" and case.path != "/healthz":
        assert response.status_code == 401, f"{case.method} {case.formatted_path}: {response.status_code}"


def test_a_download_whose_stored_file_is_gone_is_a_404_not_a_500(chute_app: ChuteApp) -> None:
    """Retention removes a job's files before its row; a download in between (or after a lost disk)."""
    from fastapi.testclient import TestClient

    job = chute_app.upload(b"a,b\n1,2\n", "gone.csv")
    chute_app.runtime.storage.path(chute_app.jobs.get(job["id"]).storage_key).unlink()
    client = TestClient(chute_app.app, raise_server_exceptions=False)
    response = client.get(f"/jobs/{job['id']}/file")
    assert response.status_code == 404, response.text
    assert "no longer stored" in response.json()["detail"]
