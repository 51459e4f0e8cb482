"""The light path of a single job (`Client.submit`, a chat completion): a batch of one whose payload
says so, so the worker reads no batch cap or window, and its completion writes no webhook event;
the API waits for the job's ping before its one read. What a user sees is unchanged: the job, its
events, its batch marked complete.

Every test runs on both backends (fakeredis + SQLite, real Redis + PostgreSQL in CI).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from producer.client import Client
from storage.bus.queue import carried_request, enqueue_jobs
from storage.jobs import ANY_TENANT, SINGLE, JobStatus, NewJob
from storage.sql.batches import Batches
from storage.sql.jobs import Jobs
from storage.webhooks import EventType
from tests.api_harness import serve_api
from tests.backends import Backend, sql_statements
from tests.test_pipeline import all_events, chat, items
from tests.webhook_receiver import Receiver

TENANT = "default"  # the pipeline settings' tenant


def batches_asked(monkeypatch: pytest.MonkeyPatch, method: str) -> list[str]:
    """The batch ids `Batches.<method>` is called with from here on, in order (it still runs)."""
    asked: list[str] = []
    real = getattr(Batches, method)

    async def recording(self: Batches, batch_id: str) -> Any:
        asked.append(batch_id)
        return await real(self, batch_id)

    monkeypatch.setattr(Batches, method, recording)
    return asked


@pytest.fixture
def marked_completed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The batches marked completed by a write of their own (`Batches.mark_completed`), in order."""
    return batches_asked(monkeypatch, "mark_completed")


@pytest.fixture
def limits_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The batches whose cap and window a worker read from SQL, in order."""
    return batches_asked(monkeypatch, "limits")


def test_a_single_jobs_payload_says_it_is_one() -> None:
    carried = carried_request("batch_1", "acme", '{"messages":[]}', max_bytes=100, single=True)
    assert carried == {"request": '{"messages":[]}', "tenant": "acme", "batch_id": "batch_1", "single": "1"}
    assert "single" not in (carried_request("batch_1", "acme", "{}", max_bytes=100) or {})
    assert carried_request("batch_1", "acme", "x" * 101, max_bytes=100, single=True) is None


async def test_a_single_job_reads_no_batch_and_finishes_as_before(
    backend: Backend, limits_read: list[str]
) -> None:
    async with Receiver() as hook:
        endpoint = await backend.store.webhooks.add_endpoint(TENANT, hook.url, list(EventType))
        client = Client(await backend.redis(), backend.store, backend.settings)
        job_id = await client.submit(chat("Just one"), custom_id="one")
        batch_id = await client.submit_batch(items(2))
        assert await backend.run_worker() == 3

    job = await client.get(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert set(limits_read) == {batch_id}  # the batch's cap and window; never the single's
    single = await client.batch(job.batch_id)
    assert single.kind == SINGLE
    assert single.completed_at is not None  # marked complete, as every batch is
    events = [e.type for e in await all_events(client, job.batch_id)]
    assert events == ["job.succeeded", "batch.progress", "batch.completed"]
    # The real batch's completion is an event for the endpoint; the single's is none.
    deliveries = await backend.store.webhooks.deliveries(tenant=TENANT)
    assert [(d.event_type, d.batch_id, d.endpoint_id) for d in deliveries] == [
        (EventType.BATCH_COMPLETED, batch_id, endpoint.id)
    ]


async def test_a_single_jobs_finish_completes_its_batch(
    backend: Backend, marked_completed: list[str]
) -> None:
    """The commit that finishes a batch of one completes the batch too (at the job's finish time, in
    its transaction): no write of its own after the publish. A real batch still gets that write."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    no_route = chat("Fails", preferences={"include_providers": ["nobody"]})
    job_ids = [await client.submit(chat("Just one")), await client.submit(no_route)]
    batch_id = await client.submit_batch(items(2))
    assert await backend.run_worker() == 4

    for job_id in job_ids:
        job = await client.get(job_id)
        assert (await client.batch(job.batch_id)).completed_at == job.finished_at is not None
    assert [(await client.get(job_id)).status for job_id in job_ids] == [
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
    ]
    assert marked_completed == [batch_id]


async def test_a_single_job_without_the_marker_takes_the_general_path(
    backend: Backend, limits_read: list[str], marked_completed: list[str]
) -> None:
    """A payload written without it (the sweeper's re-queue, a request too large to carry) reads the
    batch as any job does, and finishes the same."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    created = await client.create_single(chat("Just one"))
    await client.events_bus.open_batch(created.batch_id, 1)
    await enqueue_jobs(client.redis, created.job_ids, queue_name=backend.settings.queue_name)
    assert await backend.run_worker() == 1

    assert limits_read == [created.batch_id]
    assert (await client.get(created.job_ids[0])).status == JobStatus.SUCCEEDED
    assert (await client.batch(created.batch_id)).completed_at is not None
    assert marked_completed == [created.batch_id]  # after its publish, as any batch


@pytest.mark.parametrize(
    "extra",
    [{"budget_usd": 1.0}, {"webhook_url": "https://example.com/hook"}, {"expires_at": datetime.now(UTC)}],
)
async def test_a_batch_of_one_has_no_cap_window_or_url(backend: Backend, extra: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="batch of one"):
        await backend.store.batches.create(
            [NewJob("one", chat("Just one"))], tenant=TENANT, user_id="u1", kind=SINGLE, **extra
        )


async def test_a_chat_completion_reads_its_job_once(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API registers its wait before queuing the job: no read before the job's ping."""
    reads: list[str] = []
    real = Jobs.get

    async def counting(self: Jobs, job_id: str, **kwargs: Any) -> Any:
        reads.append(job_id)
        return await real(self, job_id, **kwargs)

    monkeypatch.setattr(Jobs, "get", counting)
    async with serve_api(backend) as api:
        sdk = api.openai(await api.key("acme"))
        # The first wait of a process may also be woken by its notifier's first subscription.
        await sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hi"}])
        raw = await sdk.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Say hello"}]
        )
        assert raw.parse().choices[0].message.content
        job_id = raw.headers["x-routeq-job-id"]
        # Streamed too: the answer comes whole, and the job is what GET /v1/jobs/<id> shows.
        stream = await sdk.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Say hello again"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text
    assert reads.count(job_id) == 1
    job = await backend.store.jobs.get(job_id, tenant=ANY_TENANT)
    assert job.status == JobStatus.SUCCEEDED
    assert (await backend.store.batches.get(job.batch_id, tenant=ANY_TENANT)).completed_at is not None


async def test_batches_of_one_made_together_share_their_statements(backend: Backend) -> None:
    """Concurrent chat completions' jobs go into SQL as one INSERT of their batch rows (and one of
    their jobs) in one group commit, each batch and job as if made alone."""
    with sql_statements(backend.store) as statements:
        made = await asyncio.gather(
            *(
                backend.store.batches.create(
                    [NewJob("request", chat(f"Hello {i}"))], tenant=TENANT, user_id="u1", kind=SINGLE
                )
                for i in range(5)
            )
        )
    assert sum(s.lstrip().upper().startswith("INSERT INTO BATCHES") for s in statements) == 1
    assert len({created.batch_id for created in made}) == 5
    for i, created in enumerate(made):
        batch = await backend.store.batches.get(created.batch_id, tenant=TENANT)
        assert (batch.kind, batch.total, batch.completed_at) == (SINGLE, 1, None)
        [job_id] = created.job_ids
        job = await backend.store.jobs.get(job_id, tenant=TENANT)
        assert (job.batch_id, job.status, job.custom_id) == (created.batch_id, JobStatus.QUEUED, "request")
        assert job.request["messages"][0]["content"] == f"Hello {i}"
