"""The worker's typed context: built once at start-up, read back by jobs, closed by shut-down."""

from __future__ import annotations

import json

import pytest

from producer.client import Client
from router_core.models import ChatRequest, Message
from storage import keys
from storage.jobs import NewJob
from tests.backends import Backend
from workers.context import WorkerContext, worker_context


def test_reading_the_context_before_start_up_names_the_hook() -> None:
    with pytest.raises(LookupError, match="on_startup"):
        worker_context({"redis": None, "job_try": 1})


async def test_shut_down_closes_what_start_up_opened_and_nothing_shared(backend: Backend) -> None:
    redis = await backend.redis()
    client = Client(redis, backend.store, backend.settings)
    request = ChatRequest(messages=[Message(role="user", content="hello")])
    await client.submit_batch([NewJob(f"item-{i}", request) for i in range(3)])
    registered: list[dict[str, object]] = []

    async def before_shutdown(context: WorkerContext) -> None:
        record = await redis.hget(keys.WORKERS, context.worker_id)  # type: ignore[misc]
        registered.append(json.loads(record))

    assert await backend.run_worker(before_shutdown=before_shutdown) == 3

    assert registered[0]["pid"] is not None  # registered while it ran
    assert await redis.hlen(keys.WORKERS) == 0  # type: ignore[misc]  # unregistered at shut-down
    assert len(await backend.store.ledger.rows()) == 3  # the shared store is still open
