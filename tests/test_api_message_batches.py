"""The Anthropic Message Batches API with the official anthropic SDK as the client, unchanged: create,
poll, typed results, the SDK's pagination both ways, cancel, delete, expiry, and field-named errors.
Workers run in burst mode in-process."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from anthropic.types.messages.batch_create_params import Request

from producer.client import Client
from router_core.models import ChatRequest
from router_core.providers import sim_world_for
from storage.jobs import ANY_TENANT, NewJob
from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend
from tests.conftest import TRIO, deployment, make_catalog

HI = ChatRequest(messages=[{"role": "user", "content": "Hi"}])
CATALOG = make_catalog([*TRIO, deployment("broken-d", sim={"error_rate": 1.0})])


def ask(custom_id: str, text: str, **params: Any) -> Request:
    body: Any = {
        "model": "auto",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": text}],
        **params,
    }
    return {"custom_id": custom_id, "params": body}


def sdk(api: LiveApi, secret: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=api.url, api_key=secret, max_retries=0)


async def run_worker(backend: Backend, **options: Any) -> int:
    return await backend.run_worker(catalog=CATALOG, sim_world=sim_world_for(CATALOG), **options)


async def ended(client: anthropic.AsyncAnthropic, batch_id: str) -> MessageBatch:
    """The batch once its processing has ended (bounded wait)."""
    async with asyncio.timeout(10):
        while True:
            batch = await client.messages.batches.retrieve(batch_id)
            if batch.processing_status == "ended":
                return batch
            await asyncio.sleep(0.01)


async def results(
    client: anthropic.AsyncAnthropic, batch_id: str
) -> dict[str, MessageBatchIndividualResponse]:
    return {line.custom_id: line async for line in await client.messages.batches.results(batch_id)}


async def test_a_message_batch_runs_and_its_results_come_back_typed(backend: Backend) -> None:
    async with (
        serve_api(backend, catalog=CATALOG, worker=False, max_attempts_per_deployment=1) as api,
        sdk(api, await api.key("acme")) as client,
    ):
        requests = [
            ask("cheap", "Name a lighthouse", system="Be terse.", preferences={"strategy": "cost"}),
            ask("smart", "Prove it", model="smart-c"),
            ask("fails", "x", model="broken-d", preferences={"allow_fallbacks": False}),
        ]
        created = await client.messages.batches.create(
            requests=requests, extra_headers={"Idempotency-Key": "nightly-1"}
        )
        assert created.type == "message_batch"
        assert created.processing_status == "in_progress"
        assert created.request_counts.processing == 3
        assert created.results_url is None
        # A retry with the same key and body gets the same batch, not a second one.
        again = await client.messages.batches.create(
            requests=requests, extra_headers={"Idempotency-Key": "nightly-1"}
        )
        assert again.id == created.id
        assert abs(created.expires_at - created.created_at - timedelta(hours=24)) < timedelta(minutes=1)

        # Past its 24 hours, a request not started yet ends expired.
        late = Client(await backend.redis(), backend.store, backend.settings, tenant="acme", user="u1")
        past = datetime.now(UTC) - timedelta(seconds=1)
        stale = await late.create([NewJob("late", HI)], kind="messages", expires_at=past)
        await late.enqueue(stale)
        await late.close()

        assert await run_worker(backend) == 4
        batch = await ended(client, created.id)
        assert batch.request_counts.model_dump() == {
            "processing": 0,
            "succeeded": 2,
            "errored": 1,
            "canceled": 0,
            "expired": 0,
        }
        assert batch.ended_at is not None
        assert batch.results_url == f"/v1/messages/batches/{batch.id}/results"

        lines = await results(client, batch.id)
        expired = await client.messages.batches.retrieve(stale.batch_id)
        assert (expired.request_counts.expired, expired.request_counts.errored) == (1, 0)
        listed = {b.id: b.request_counts async for b in client.messages.batches.list()}
        assert (listed[stale.batch_id].expired, listed[batch.id].errored) == (1, 1)  # counted per page
        assert (await results(client, stale.batch_id))["late"].result.type == "expired"
        assert set(lines) == {"cheap", "smart", "fails"}
        jobs = {job.custom_id: job async for job in backend.store.jobs.iter(batch.id, tenant=ANY_TENANT)}
        for custom_id in ("cheap", "smart"):
            result = lines[custom_id].result
            assert isinstance(result, anthropic.types.messages.MessageBatchSucceededResult)
            [block] = result.message.content
            assert isinstance(block, anthropic.types.TextBlock)
            answer = jobs[custom_id].result
            assert answer is not None
            assert block.text == answer["content"]
            assert result.message.usage.output_tokens == answer["usage"]["output_tokens"]
        assert jobs["cheap"].deployment == "cheap-a"  # routed across providers, by cost here
        assert jobs["smart"].deployment == "smart-c"
        failed = lines["fails"].result
        assert isinstance(failed, anthropic.types.messages.MessageBatchErroredResult)
        assert failed.error.type == "error"
        assert failed.error.error.type == "api_error"
        assert "broken-d" in failed.error.error.message


async def test_pages_cancel_delete_errors_and_tenants(backend: Backend) -> None:
    async with (
        serve_api(backend, catalog=CATALOG, worker=False) as api,
        sdk(api, await api.key("acme")) as client,
        sdk(api, await api.key("globex")) as stranger,
    ):
        await _bad_batches_are_refused_naming_request_and_field(client)
        made = [(await client.messages.batches.create(requests=[ask(f"q{i}", "Hi")])).id for i in range(3)]
        await _foreign_ids_are_404(stranger, made[0])
        # A chat completion's batch is not a message batch: never listed, 404 by id.
        other = await backend.store.batches.create(
            [NewJob("chat", HI)], tenant="acme", user_id="u1", kind="single"
        )
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve(other.batch_id)

        first = await client.messages.batches.list(limit=2)
        assert [b.id for b in first.data] == made[:0:-1]  # newest first
        assert (first.has_more, first.first_id, first.last_id) == (True, made[2], made[1])
        assert [b.id async for b in client.messages.batches.list(limit=2)] == made[::-1]
        newer = await client.messages.batches.list(limit=2, before_id=made[0])
        assert [b.id for b in newer.data] == [made[2], made[1]]
        assert not newer.has_more
        # Paging towards the newest: the SDK passes each page's first_id as the next before_id.
        assert [b.id async for b in client.messages.batches.list(limit=1, before_id=made[0])] == made[1:]

        with pytest.raises(anthropic.BadRequestError, match="still processing"):
            await client.messages.batches.delete(made[0])
        for batch_id in made:  # nothing ran yet: each ends at once, its request canceled
            stopped = await client.messages.batches.cancel(batch_id)
            assert stopped.processing_status == "ended"
            assert (stopped.request_counts.canceled, stopped.request_counts.processing) == (1, 0)
        deleted = await client.messages.batches.delete(made[0])
        assert (deleted.id, deleted.type) == (made[0], "message_batch_deleted")
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve(made[0])
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.results(made[0])
        assert [b.id async for b in client.messages.batches.list()] == made[:0:-1]

        big = await client.messages.batches.create(requests=[ask(f"r{i}", f"Question {i}") for i in range(8)])
        done = await run_worker(backend, max_burst_jobs=2, max_jobs=1)  # a few requests run, the rest wait
        assert 0 < done < 8
        cancelled = await client.messages.batches.cancel(big.id)
        assert cancelled.cancel_initiated_at is not None
        assert cancelled.processing_status == "ended"  # nothing was running: every queued one canceled
        assert (cancelled.request_counts.succeeded, cancelled.request_counts.canceled) == (done, 8 - done)
        kinds = sorted(line.result.type for line in (await results(client, big.id)).values())
        assert kinds == ["canceled"] * (8 - done) + ["succeeded"] * done


async def _bad_batches_are_refused_naming_request_and_field(client: anthropic.AsyncAnthropic) -> None:
    no_params: Any = {"custom_id": "b"}
    cases: list[tuple[list[Any], str, str]] = [
        (
            [ask("a", "x"), no_params],
            "requests.1.params",
            "requests.1 (custom_id 'b'): params: expected",
        ),
        (
            [ask("a", "x", model="no-such-model")],
            "requests.0.params.model",
            "requests.0 (custom_id 'a'): params.model 'no-such-model' is not served here",
        ),
        (
            [ask("a", "x", messages=[{"role": "wizard", "content": "x"}])],
            "requests.0.params.messages.0.role",
            "params.messages.0.role: must be 'user' or 'assistant'",
        ),
        (
            [ask("a", "x"), ask("a", "y")],
            "requests.1.custom_id",
            "'a' is the custom_id of requests.0 too",
        ),
        ([ask("a b", "x")], "requests.0.custom_id", "requests.0.custom_id: expected 1 to 64 letters"),
        (
            [ask("a", "x", stream=True)],
            "requests.0.params.stream",
            "a batch request cannot be streamed",
        ),
        ([], "requests", "requests: expected a non-empty list"),
    ]
    for requests, param, message in cases:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.batches.create(requests=requests)
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["error"]["param"] == param
        assert message in caught.value.body["error"]["message"]
    assert [b async for b in client.messages.batches.list()] == []  # nothing was made


async def _foreign_ids_are_404(stranger: anthropic.AsyncAnthropic, mine: str) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await stranger.messages.batches.retrieve(mine)
    with pytest.raises(anthropic.NotFoundError):
        await stranger.messages.batches.cancel(mine)
    with pytest.raises(anthropic.NotFoundError):
        await stranger.messages.batches.delete(mine)
    assert [b async for b in stranger.messages.batches.list()] == []
    with pytest.raises(anthropic.NotFoundError) as missing:
        await stranger.get(f"/v1/messages/batches/{mine}/results", cast_to=object)
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["error"]["type"] == "not_found_error"
