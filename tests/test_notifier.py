"""Waiting without a connection per waiter: one subscription per process wakes every local waiter,
and a subscription that drops and comes back loses no completion. Both backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from producer.client import Client
from storage import keys
from storage.bus.notifier import Notifier
from storage.jobs import JobRecord, JobStatus, NewJob
from storage.sql.jobs import Jobs
from tests.backends import Backend
from tests.test_pipeline import chat

_DROP = keys.job_done_channel("drop-the-subscription")
_DROPS = (_DROP, _DROP.encode())


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until `condition` holds, letting other tasks run."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - counters of the code under test, which signals nothing
            await asyncio.sleep(0.005)


def opened_connections(redis: Redis) -> int:
    pool = redis.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


async def test_many_waits_share_one_subscription_and_all_complete(backend: Backend) -> None:
    async with Client(await backend.redis(), backend.store, backend.settings) as client:
        batch_id = await client.submit_batch([NewJob(f"w-{i}", chat(f"hello {i}")) for i in range(60)])
        job_ids = [job.id async for job in client.results(batch_id)]
        waits = [asyncio.create_task(client.wait(job_id)) for job_id in job_ids]
        await until(lambda: client.notifier.waiting == 60 and client.notifier.subscriptions == 1)
        # Every waiter has read SQL once and sleeps: one subscription, no connection each.
        assert opened_connections(client.redis) <= 3

        await backend.run_worker()
        async with asyncio.timeout(30):
            done = await asyncio.gather(*waits)
        assert {job.status for job in done} == {JobStatus.SUCCEEDED}
        assert client.notifier.waiting == 0
        assert opened_connections(client.redis) <= 3


class _DroppingRedis:
    """A Redis whose first subscription drops on a message to `_DROP`; the next one waits for `resume`."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.subscribing_again = asyncio.Event()
        self.resume = asyncio.Event()
        self._made = 0

    def pubsub(self) -> _PubSub:
        self._made += 1
        return _PubSub(self._redis.pubsub(), self, first=self._made == 1)


class _PubSub:
    def __init__(self, inner: Any, owner: _DroppingRedis, *, first: bool) -> None:
        self._inner = inner
        self._owner = owner
        self._first = first

    async def __aenter__(self) -> _PubSub:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.aclose()

    async def psubscribe(self, *patterns: str) -> None:
        if not self._first:
            self._owner.subscribing_again.set()
            await self._owner.resume.wait()  # the gap: whatever is published now is lost
        await self._inner.psubscribe(*patterns)

    async def get_message(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - redis-py's signature
        message = await self._inner.get_message(timeout=timeout)
        dropped = message is not None and message["type"] == "pmessage" and message["channel"] in _DROPS
        if self._first and dropped:
            raise RedisConnectionError("Connection closed by server.")
        return message


class _ReadsSeen:
    """`store.jobs` that counts the reads of one job."""

    def __init__(self, jobs: Jobs) -> None:
        self._jobs = jobs
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jobs, name)

    async def get(self, job_id: str, **kwargs: Any) -> JobRecord:
        record = await self._jobs.get(job_id, **kwargs)
        self.reads += 1
        return record


async def test_a_completion_published_while_the_subscription_is_down_is_not_lost(backend: Backend) -> None:
    redis = await backend.redis()
    dropping = _DroppingRedis(redis)
    notifier = Notifier(dropping, retry_delay_s=0)  # type: ignore[arg-type]
    reads = _ReadsSeen(backend.store.jobs)
    backend.store.jobs = reads  # type: ignore[assignment]
    client = Client(redis, backend.store, backend.settings, notifier=notifier)
    try:
        job_id = await client.submit(chat("hello"))
        notifier.start()
        await until(lambda: notifier.subscriptions == 1)
        waiter = asyncio.create_task(client.wait(job_id))
        await until(lambda: reads.reads == 1)  # read SQL (queued), now asleep

        await redis.publish(_DROP, "")  # the subscription's connection drops
        await asyncio.wait_for(dropping.subscribing_again.wait(), 10)
        await until(lambda: reads.reads == 2)  # woken by the drop: still queued, back to sleep
        await backend.run_worker()  # the job finishes; its completion ping reaches no subscriber
        assert not waiter.done()

        dropping.resume.set()  # subscribed again: every waiter reads SQL again
        async with asyncio.timeout(10):
            job = await waiter
        assert job.status == JobStatus.SUCCEEDED
        assert notifier.subscriptions == 2
    finally:
        await notifier.close()
