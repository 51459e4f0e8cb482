"""A worker's transactions as one coalesced Lua call: the same replies and effects as MULTI/EXEC.

Every case runs the same commands through redis-py's own transaction and a `CoalescedTransaction`
on keys of their own and compares what each returned and left, on fakeredis and a real Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from fakeredis import FakeServer
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from storage.bus.transactions import CoalescedTransaction, CoalescingRedis, worker_client
from storage.connections import connect_redis, embedded_redis
from tests.backends import REDIS_ENV, pipeline_settings, service_url

Queue = Callable[[Pipeline, str], None]


@pytest.fixture(params=["fakeredis", "redis"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[CoalescingRedis]:
    if request.param == "redis":
        settings = pipeline_settings(redis_url=service_url(REDIS_ENV), database_url="sqlite+aiosqlite://")
        plain: ArqRedis = await connect_redis(settings)
    else:
        plain = embedded_redis(pipeline_settings(redis_url=None), FakeServer())
    client = CoalescingRedis.sharing(plain)
    await client.delete(*[f"{side}:{name}" for side in ("theirs", "ours") for name in "abcdefgh"])
    try:
        yield client
    finally:
        await client.aclose(close_connection_pool=True)


def arq_start(pipe: Pipeline, side: str) -> None:
    """arq's run_job: the payload, the try counter (twice: a second delivery), and a missing one."""
    pipe.set(f"{side}:a", b"payload", px=60_000)
    pipe.get(f"{side}:a")
    pipe.incr(f"{side}:b")
    pipe.expire(f"{side}:b", 88400)
    pipe.incr(f"{side}:b")
    pipe.get(f"{side}:c")


def arq_failed(pipe: Pipeline, side: str) -> None:
    """arq's finish_failed_job: keys deleted, queue entries removed, a result kept."""
    pipe.set(f"{side}:a", 1)
    pipe.set(f"{side}:b", 2)
    pipe.zadd(f"{side}:q", {"job": 1.5, "other": 2})
    pipe.delete(f"{side}:a", f"{side}:b", f"{side}:missing")
    pipe.zrem(f"{side}:q", "job")
    pipe.zrem(f"{side}:q", "none")
    pipe.psetex(f"{side}:r", 60_000, b"result")
    pipe.setex(f"{side}:s", 60, "x")
    pipe.zscore(f"{side}:q", "other")


def hashes(pipe: Pipeline, side: str) -> None:
    pipe.hset(f"{side}:h", mapping={"f": "1", "g": "é"})
    pipe.hincrby(f"{side}:h", "f", 2)
    pipe.hget(f"{side}:h", "g")
    pipe.hmget(f"{side}:h", ["f", "nope", "g"])
    pipe.hgetall(f"{side}:h")
    pipe.hdel(f"{side}:h", "g")
    pipe.exists(f"{side}:h")
    pipe.zadd(f"{side}:z", {"m": 1})
    pipe.zcard(f"{side}:z")
    pipe.incrby(f"{side}:n", 5)
    pipe.pexpire(f"{side}:n", 5000)


@pytest.mark.parametrize("queue", [arq_start, arq_failed, hashes])
async def test_a_coalesced_transaction_replies_and_writes_as_multi_exec(
    redis: CoalescingRedis, queue: Queue
) -> None:
    async with Pipeline(redis.connection_pool, redis.response_callbacks, True, None) as theirs:
        queue(theirs, "theirs")
        expected = await theirs.execute()
    async with redis.pipeline(transaction=True) as ours:
        assert isinstance(ours, CoalescedTransaction)
        queue(ours, "ours")
        batches = redis.transaction_script._coalescer._batcher.batches
        got = await ours.execute()
    assert redis.transaction_script._coalescer._batcher.batches == batches + 1  # one coalesced call
    assert got == expected
    for name in "abcdhnqrsz":
        assert await dump(redis, f"ours:{name}") == await dump(redis, f"theirs:{name}"), name


async def dump(redis: ArqRedis, key: str) -> Any:
    """A key's type, whether it expires, and its value (read through a pipeline, typed as such)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.type(key)
        pipe.pttl(key)
        pipe.get(key)
        kind, ttl, _ = await pipe.execute(raise_on_error=False)
    async with redis.pipeline(transaction=False) as pipe:
        if kind == b"hash":
            pipe.hgetall(key)
        elif kind == b"zset":
            pipe.zrange(key, 0, -1, withscores=True)
        else:
            pipe.get(key)
        (value,) = await pipe.execute()
    return kind, ttl > 0, value


async def test_a_failing_command_fails_alone_as_in_exec(redis: CoalescingRedis) -> None:
    async with redis.pipeline(transaction=False) as lists:
        lists.rpush("theirs:e", "a list")
        lists.rpush("ours:e", "a list")
        await lists.execute()
    results = []
    for side, pipe in (
        ("theirs", Pipeline(redis.connection_pool, redis.response_callbacks, True, None)),
        ("ours", redis.pipeline(transaction=True)),
    ):
        async with pipe:
            pipe.set(f"{side}:a", "1")
            pipe.incr(f"{side}:e")
            pipe.incr(f"{side}:a")
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await pipe.execute()
            pipe.incr(f"{side}:e")
            pipe.incr(f"{side}:a")
            results.append(await pipe.execute(raise_on_error=False))
    (their_error, theirs), (our_error, ours) = ((r[0], r[1]) for r in results)
    assert type(our_error) is type(their_error)
    assert "WRONGTYPE" in str(our_error)
    assert ours == theirs == 3  # the command after the failing one ran, twice
    await redis.delete("theirs:e", "ours:e")


async def test_watch_multi_and_other_commands_are_left_to_redis_py(redis: CoalescingRedis) -> None:
    batcher = redis.transaction_script._coalescer._batcher
    before = batcher.batches
    async with redis.pipeline(transaction=True) as pipe:  # arq's enqueue_job: WATCH, then MULTI
        await pipe.watch("ours:a")
        assert await pipe.get("ours:a") is None
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.set("ours:a", "1")
        assert await pipe.execute() == [True]
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lpush("ours:l", "x")  # not one of TRANSACTABLE
        pipe.get("ours:a")
        assert await pipe.execute() == [1, b"1"]
    assert batcher.batches == before
    async with redis.pipeline(transaction=False) as plain:
        assert not isinstance(plain, CoalescedTransaction)
    await redis.delete("ours:a", "ours:l")


async def test_a_worker_client_shares_the_pool_and_is_made_once() -> None:
    plain = embedded_redis(pipeline_settings(redis_url=None), FakeServer())
    client = await worker_client(plain)
    assert client.connection_pool is plain.connection_pool
    assert client.default_queue_name == plain.default_queue_name
    assert await worker_client(client) is client
    await client.aclose(close_connection_pool=True)
