"""Webhooks end to end, on both backends: batches and jobs finish in a burst worker, their events go
to the outbox in SQL, and the sender POSTs them to real receivers on 127.0.0.1.

Signatures are checked with the `standardwebhooks` package (the receiver's side), not routeq's
code. The sender runs in the test with no backoff (or a fake clock), so retries are immediate and
deterministic; the worker's own sender is off (`webhook_poll_s = 0`) so nothing races the test.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from sqlalchemy import update
from standardwebhooks import Webhook

from producer.client import Client
from producer.inputs import read_jsonl_chunks
from router_core.errors import InvalidRequestError
from router_core.providers import parse_retry_after, sim_world_for
from storage.bus.events import EventBus
from storage.bus.queue import enqueue_jobs
from storage.bus.recovery import finish_batch
from storage.jobs import ANY_TENANT
from storage.sql.schema import batches
from storage.sql.store import Store
from storage.webhooks import DeliveryState, EventType, check_events
from tests.backends import Backend
from tests.conftest import deployment, make_catalog
from tests.test_pipeline import chat, items
from tests.webhook_receiver import Receiver
from workers.webhooks import RetryPolicy, WebhookSender

TENANT = "default"  # the pipeline settings' tenant


class Now:
    """A fake clock for the sender: starts a second past the real time, so the outbox rows written
    before it was made are due (make it after them: a slow batch may take longer than that)."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.at


@asynccontextmanager
async def sender(
    backend: Backend,
    *,
    max_attempts: int = 5,
    backoff_s: float = 0.0,
    now: Callable[[], datetime] | None = None,
) -> AsyncIterator[WebhookSender]:
    policy = RetryPolicy(timeout_s=5.0, max_attempts=max_attempts, backoff_s=backoff_s)
    made = WebhookSender(
        await backend.redis(), backend.store, policy, holder="test", interval_s=0, now=now or Now()
    )
    try:
        yield made
    finally:
        await made.close()


async def drain(webhooks: WebhookSender) -> int:
    """Send until nothing is due (no backoff: a failed attempt is due again at once)."""
    made = 0
    for _ in range(50):
        sent = await webhooks.deliver_due()
        if not sent:
            return made
        made += sent
    raise AssertionError("deliveries still due after 50 rounds")


def verified(secret: str, received: Any) -> dict[str, Any]:
    """The body, as the receiver's Standard Webhooks library verifies it (raises if it does not)."""
    document: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return document


async def run_batch(backend: Backend, n: int = 2, *, failing: bool = False, **submit: Any) -> str:
    # No sender in the worker (the test drives one), and no breaker: a failing deployment's jobs
    # then fail for good instead of waiting for its cooldown.
    backend.settings = backend.settings.model_copy(update={"webhook_poll_s": 0.0, "breaker_failures": 1000})
    client = Client(await backend.redis(), backend.store, backend.settings)
    batch_id = await client.submit_batch(items(n), **submit)
    catalog = make_catalog([deployment("down-a", sim={"error_rate": 1.0})]) if failing else None
    await backend.run_worker(catalog=catalog, sim_world=sim_world_for(catalog) if catalog else None)
    return batch_id


async def test_a_bad_receiver_then_a_good_one_gets_the_batch_event_signed(backend: Backend) -> None:
    async with Receiver([500, 200]) as hook:
        batch_id = await run_batch(backend, webhook_url=hook.url)
        async with sender(backend) as webhooks:
            assert await drain(webhooks) == 2

    [delivery] = await backend.store.webhooks.deliveries(tenant=TENANT, batch_id=batch_id)
    assert (delivery.event_type, delivery.state, delivery.attempts) == (
        EventType.BATCH_COMPLETED,
        DeliveryState.DELIVERED,
        2,
    )
    first, second = delivery.tries
    assert (first.status_code, first.error, second.status_code, second.error) == (500, "HTTP 500", 200, None)
    assert first.response_excerpt == '{"answer": 500}'
    assert first.latency_ms > 0

    # Both attempts carried the same event id and body; each is signed for its own timestamp.
    assert len(hook.received) == 2
    assert (
        hook.received[0].headers["webhook-id"] == hook.received[1].headers["webhook-id"] == delivery.event_id
    )
    assert hook.received[0].body == hook.received[1].body
    secret = await backend.store.webhooks.tenant_secret(TENANT)
    event = verified(secret, hook.received[1])
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch_id
    assert event["data"]["request_counts"] == {
        "total": 2,
        "succeeded": 2,
        "failed": 0,
        "cancelled": 0,
        "invalid_lines": 0,
    }
    assert event["data"]["cost_usd"] > 0
    tampered = type(hook.received[1])("/", hook.received[1].headers, hook.received[1].body.replace("2", "3"))
    with pytest.raises(Exception, match="signature"):
        verified(secret, tampered)


async def test_tenant_endpoints_get_the_event_types_they_asked_for(backend: Backend) -> None:
    async with Receiver() as jobs_hook, Receiver() as completed_hook, Receiver() as failed_hook:
        on_jobs = await backend.store.webhooks.add_endpoint(TENANT, jobs_hook.url, [EventType.JOB_FAILED])
        await backend.store.webhooks.add_endpoint(TENANT, completed_hook.url, [EventType.BATCH_COMPLETED])
        on_failed = await backend.store.webhooks.add_endpoint(
            TENANT, failed_hook.url, [EventType.BATCH_FAILED]
        )
        # A single job is a batch of one: its failure is a job.failed, but no batch event of its own.
        single = Client(await backend.redis(), backend.store, backend.settings)
        await single.submit(chat("Just one"), custom_id="single")
        batch_id = await run_batch(backend, failing=True)  # every call fails: the batch fails
        async with sender(backend) as webhooks:
            assert await drain(webhooks) == 4

    assert completed_hook.received == []
    assert on_jobs.secret is not None
    assert on_failed.secret is not None
    failed_jobs = [verified(on_jobs.secret, r) for r in jobs_hook.received]
    assert sorted(e["data"]["custom_id"] for e in failed_jobs) == ["item-0", "item-1", "single"]
    assert {e["type"] for e in failed_jobs} == {"job.failed"}
    assert failed_jobs[0]["data"]["error"]["type"] == "AllAttemptsFailedError"
    assert failed_jobs[0]["data"]["deployments"] == ["down-a"]
    [batch_event] = [verified(on_failed.secret, r) for r in failed_hook.received]
    assert batch_event["type"] == "batch.failed"
    assert batch_event["data"]["request_counts"]["failed"] == 2
    # One endpoint's secret does not verify another's messages.
    with pytest.raises(Exception, match="signature"):
        verified(on_failed.secret, jobs_hook.received[0])
    # Listed, and readable by their tenant only.
    assert [e.url for e in await backend.store.webhooks.endpoints(TENANT)] == [
        jobs_hook.url,
        completed_hook.url,
        failed_hook.url,
    ]
    assert await backend.store.webhooks.deliveries(tenant="someone-else", batch_id=batch_id) == []


async def test_a_finishing_job_delivered_again_makes_no_second_event(backend: Backend) -> None:
    async with Receiver() as hook:
        await backend.store.webhooks.add_endpoint(TENANT, hook.url, list(EventType))
        batch_id = await run_batch(backend, failing=True)
        client = Client(await backend.redis(), backend.store, backend.settings)
        job_ids = [job.id async for job in client.results(batch_id)]
        # arq delivers every job again after the commit (a worker that died before acking them),
        # then the sweeper finishes the batch again as if its mark were lost.
        await enqueue_jobs(await backend.redis(), job_ids, queue_name=backend.settings.queue_name)
        assert await backend.run_worker() == 2
        async with backend.store.db.engine.begin() as conn:
            await conn.execute(update(batches).where(batches.c.id == batch_id).values(completed_at=None))
        await finish_batch(backend.store, EventBus(await backend.redis(), retention_s=60), batch_id)
        async with sender(backend) as webhooks:
            await drain(webhooks)

    deliveries = await backend.store.webhooks.deliveries(tenant=TENANT, batch_id=batch_id)
    assert sorted(d.event_type.value for d in deliveries) == ["batch.failed", "job.failed", "job.failed"]
    assert len(hook.received) == 3
    assert len({r.headers["webhook-id"] for r in hook.received}) == 3


async def test_workers_claiming_at_once_send_each_attempt_once(backend: Backend) -> None:
    """Four senders (two processes' worth of stores on PostgreSQL) claim the same due delivery at once."""
    async with Receiver([500]) as hook:
        await run_batch(backend, n=1, webhook_url=hook.url)
        stores = [backend.store]
        if backend.name == "services":  # a second engine: the claims race in two transactions
            stores.append(await Store.open(backend.settings.database_url))
        senders = [
            WebhookSender(
                await backend.redis(), store, RetryPolicy(max_attempts=1), holder=f"w{i}", interval_s=0
            )
            for i, store in enumerate(stores * 2)
        ]
        try:
            made = await asyncio.gather(*(s.deliver_due() for s in senders))
        finally:
            for webhooks in senders:
                await webhooks.close()
            for store in stores[1:]:
                await store.close()
    assert sum(made) == 1
    assert len(hook.received) == 1
    [delivery] = await backend.store.webhooks.deliveries(tenant=TENANT)
    assert (delivery.attempts, [t.attempt_no for t in delivery.tries]) == (1, [1])


async def test_a_batch_whose_every_line_was_invalid_fails_at_once(backend: Backend) -> None:
    async with Receiver() as hook:
        client = Client(await backend.redis(), backend.store, backend.settings)
        bad = [{"line": 1, "reason": "unknown field 'promt'", "custom_id": "line-1"}]
        batch_id = await client.submit_batch([], invalid_lines=bad, webhook_url=hook.url)
        async with sender(backend) as webhooks:
            assert await drain(webhooks) == 1
    event = verified(await backend.store.webhooks.tenant_secret(TENANT), hook.received[0])
    assert (event["type"], event["data"]["id"], event["data"]["status"]) == (
        "batch.failed",
        batch_id,
        "failed",
    )
    assert event["data"]["request_counts"]["invalid_lines"] == 1


async def test_a_file_submitted_chunk_by_chunk_carries_its_webhook(backend: Backend) -> None:
    """`routeq submit --webhook URL`'s path: the URL is registered with the batch's first chunk."""
    async with Receiver() as hook:
        backend.settings = backend.settings.model_copy(update={"webhook_poll_s": 0.0})
        client = Client(await backend.redis(), backend.store, backend.settings)
        lines = io.BytesIO(b'{"prompt": "one"}\n{"prompt": "two"}\n{"prompt": "three"}\n')
        done = await client.submit_chunks(read_jsonl_chunks(lines, chunk_lines=2), webhook_url=hook.url)
        await backend.run_worker()
        async with sender(backend) as webhooks:
            assert await drain(webhooks) == 1
    event = verified(await backend.store.webhooks.tenant_secret(TENANT), hook.received[0])
    assert (event["type"], event["data"]["id"]) == ("batch.completed", done.batch_id)
    assert event["data"]["request_counts"]["succeeded"] == 3


async def test_a_bad_url_or_event_type_is_refused_clearly(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    with pytest.raises(
        InvalidRequestError, match=r"webhook_url: 'ftp://x/y': a webhook URL must start with http"
    ):
        await client.submit_batch(items(1), webhook_url="ftp://x/y")
    with pytest.raises(
        InvalidRequestError, match=r"webhook_url: 'https:///path': a webhook URL needs a host"
    ):
        await client.submit_batch(items(1), webhook_url="https:///path")
    with pytest.raises(InvalidRequestError, match=r"webhook_url: .*with spaces"):
        await client.submit_batch(items(1), webhook_url="https://a b")
    with pytest.raises(InvalidRequestError, match=r"events: unknown event type 'batch.done' \(one of"):
        check_events(["batch.done"])
    assert await backend.store.batches.list(tenant=TENANT) == []  # nothing was created


async def test_a_delivery_is_given_up_after_max_attempts_and_an_admin_sends_it_again(
    backend: Backend,
) -> None:
    async with Receiver([503, 503, 503, 200]) as hook:
        batch_id = await run_batch(backend, webhook_url=hook.url)
        async with sender(backend, max_attempts=3) as webhooks:
            assert await drain(webhooks) == 3
            [failed] = await backend.store.webhooks.deliveries(tenant=TENANT, state=DeliveryState.FAILED)
            assert (failed.batch_id, failed.attempts, failed.last_status) == (batch_id, 3, 503)
            assert [t.status_code for t in failed.tries] == [503, 503, 503]

            again = await backend.store.webhooks.retry(failed.id, tenant=TENANT)
            assert again.state == DeliveryState.PENDING
            with pytest.raises(ValueError, match="is pending: only a failed one"):
                await backend.store.webhooks.retry(failed.id, tenant=TENANT)
            assert await drain(webhooks) == 1

    delivered = await backend.store.webhooks.delivery(failed.id, tenant=ANY_TENANT)
    assert (delivered.state, delivered.attempts, delivered.last_status) == (DeliveryState.DELIVERED, 4, 200)


async def test_retry_after_and_backoff_set_the_next_attempt_on_a_fake_clock(backend: Backend) -> None:
    async with Receiver([(429, {"Retry-After": "30"}), 500, 200]) as hook:
        await run_batch(backend, webhook_url=hook.url)
        now = Now()  # after the batch: its delivery, written at the real time then, is due
        async with sender(backend, backoff_s=2.0, now=now) as webhooks:
            assert await webhooks.deliver_due() == 1  # 429: Retry-After 30 s beats the 2 s backoff
            [pending] = await backend.store.webhooks.deliveries(tenant=TENANT)
            assert pending.next_attempt_at == now.at + timedelta(seconds=30)
            now.at += timedelta(seconds=29)
            assert await webhooks.deliver_due() == 0
            now.at += timedelta(seconds=1)
            assert await webhooks.deliver_due() == 1  # 500: the second backoff, 4 s
            [pending] = await backend.store.webhooks.deliveries(tenant=TENANT)
            assert pending.next_attempt_at == now.at + timedelta(seconds=4)
            now.at += timedelta(seconds=4)
            assert await webhooks.deliver_due() == 1
    [delivered] = await backend.store.webhooks.deliveries(tenant=TENANT)
    assert [t.status_code for t in delivered.tries] == [429, 500, 200]


async def test_an_unreachable_receiver_is_recorded_as_an_error(backend: Backend) -> None:
    async with Receiver() as hook:
        url = hook.url  # closed when the block ends: nothing listens there any more
    batch_id = await run_batch(backend, webhook_url=url)
    async with sender(backend, max_attempts=1) as webhooks:
        assert await drain(webhooks) == 1
    [delivery] = await backend.store.webhooks.deliveries(tenant=TENANT, batch_id=batch_id)
    assert delivery.state == DeliveryState.FAILED
    assert delivery.tries[0].status_code is None
    assert delivery.tries[0].error is not None
    assert "Connect" in delivery.tries[0].error
    assert delivery.view()["attempts"][0]["error"] == delivery.tries[0].error


async def test_a_receiver_that_never_answers_times_out(backend: Backend) -> None:
    async with Receiver([0]) as hook:
        batch_id = await run_batch(backend, webhook_url=hook.url)
        policy = RetryPolicy(timeout_s=0.2, max_attempts=1)
        webhooks = WebhookSender(await backend.redis(), backend.store, policy, holder="test", interval_s=0)
        try:
            assert await webhooks.deliver_due() == 1
        finally:
            await webhooks.close()
    [delivery] = await backend.store.webhooks.deliveries(tenant=TENANT, batch_id=batch_id)
    assert (delivery.state, delivery.tries[0].status_code) == (DeliveryState.FAILED, None)
    assert delivery.tries[0].error == "no answer within 0.2s (ROUTEQ_WEBHOOK_TIMEOUT_S)"
    assert delivery.tries[0].latency_ms >= 200


def test_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()

    def retry_after_s(value: str | None) -> float | None:  # what the sender reads from an answer
        return parse_retry_after(httpx2.Headers({} if value is None else {"retry-after": value}), now=now)

    assert retry_after_s("120") == 120.0
    assert retry_after_s("Mon, 30 Nov 2026 12:01:00 GMT") == 60.0
    assert retry_after_s("Mon, 30 Nov 2026 12:01:00 -0000") == 60.0  # a date with no zone is GMT
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None
    policy = RetryPolicy(backoff_s=5, backoff_max_s=60)
    assert [policy.delay_s(n) for n in (1, 2, 3, 5)] == [5, 10, 20, 60]
    assert policy.delay_s(1, retry_after=30) == 30
