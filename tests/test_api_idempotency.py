"""A client's retry never pays twice: job ids on every error, and `Idempotency-Key` on the POSTs
that create work (chat completions, jobs, batches). Both backends.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from producer.client import Client
from storage.jobs import JobRecord
from storage.sql.schema import jobs
from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend
from tests.test_api_batches import jsonl, line

CHAT = {"model": "router:cost", "messages": [{"role": "user", "content": "Say hello to the keeper"}]}


async def _job_count(backend: Backend) -> int:
    async with backend.store.reading() as conn:
        return int((await conn.execute(select(func.count()).select_from(jobs))).scalar_one())


def _http(api: LiveApi, secret: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=api.url, headers={"authorization": f"Bearer {secret}"}, timeout=30)


async def test_a_blip_while_waiting_names_the_job_and_the_retry_gets_its_answer(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get = Client.get
    blips: list[str] = []

    async def blinking_get(self: Client, job_id: str) -> JobRecord:
        if not blips:  # the first read of the finished job loses its connection, as in a failover
            blips.append(job_id)
            raise OperationalError("SELECT ... FROM jobs", {}, ConnectionError("connection closed"))
        return await real_get(self, job_id)

    monkeypatch.setattr(Client, "get", blinking_get)
    async with serve_api(backend) as api, _http(api, await api.key("acme")) as http:
        headers = {"Idempotency-Key": "order-77"}
        first = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert first.status_code == 503
        job_id = first.headers["x-routeq-job-id"]
        assert job_id == blips[0]
        assert first.json()["error"]["job_id"] == job_id
        assert job_id in first.json()["error"]["message"]

        retry = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert retry.status_code == 200, retry.text
        assert retry.headers["x-routeq-job-id"] == job_id
        assert retry.json()["choices"][0]["message"]["content"]
    assert await _job_count(backend) == 1
    assert len(await backend.store.ledger.rows(job_id=job_id)) == 1


async def test_the_same_key_gets_the_same_job_and_another_body_is_refused(backend: Backend) -> None:
    async with serve_api(backend) as api, _http(api, await api.key("acme")) as http:
        headers = {"Idempotency-Key": "k-1"}
        first = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        again = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert (first.status_code, again.status_code) == (200, 200)
        job_id = first.headers["x-routeq-job-id"]
        assert again.headers["x-routeq-job-id"] == job_id
        assert again.json()["choices"] == first.json()["choices"]

        other: dict[str, Any] = {**CHAT, "max_tokens": 5}
        refused = await http.post("/v1/chat/completions", json=other, headers=headers)
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "idempotency_key_reused"
        assert "Idempotency-Key 'k-1'" in refused.json()["error"]["message"]
        # The same key on another route is another request too.
        body = {"messages": CHAT["messages"]}
        assert (await http.post("/v1/jobs", json=body, headers=headers)).status_code == 422

        queued = [
            await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-2"}) for _ in range(2)
        ]
        assert [r.status_code for r in queued] == [202, 202]
        assert queued[0].json()["id"] == queued[1].json()["id"]

        # Keys belong to a tenant: another tenant's k-1 is its own request.
        async with _http(api, await api.key("globex")) as theirs:
            their = await theirs.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert their.status_code == 200
            assert their.headers["x-routeq-job-id"] != job_id
    assert await _job_count(backend) == 3
    assert len(await backend.store.ledger.rows(job_id=job_id)) == 1


async def test_a_batch_created_twice_with_one_key_is_one_batch(backend: Backend) -> None:
    async with serve_api(backend, worker=False) as api:
        client = api.openai(await api.key("acme"))
        uploaded = await client.files.create(
            file=("p.jsonl", jsonl([line(f"q-{i}", f"Question {i}?") for i in range(3)])), purpose="batch"
        )
        options: dict[str, Any] = {
            "input_file_id": uploaded.id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "extra_headers": {"Idempotency-Key": "nightly-2026-12-01"},
        }
        first = await client.batches.create(**options)
        again = await client.batches.create(**options)
        assert again.id == first.id
        fresh = await client.batches.create(**{**options, "extra_headers": {"Idempotency-Key": "other"}})
        assert fresh.id != first.id
    assert await _job_count(backend) == 6
