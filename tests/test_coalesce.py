"""Calls of concurrent callers batched per event-loop turn: Redis commands in one pipeline
(storage/bus/coalesce.py) and SQL starts/finishes in one statement per kind (storage/sql/runs.py).
Both backends."""

from __future__ import annotations

import asyncio
import functools
import gc
import warnings
from collections.abc import Awaitable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from router_core.models import (
    Attempt,
    AttemptOutcome,
    ChatRequest,
    CompletionResult,
    Message,
    Strategy,
    Usage,
)
from storage.bus.coalesce import BatchedScript, Later, TickBatcher, coalescer_for, in_turn, ready
from storage.errors import NotFoundError
from storage.jobs import ANY_TENANT, JobRecord, JobStatus, NewJob, StartedJob
from tests.backends import Backend, sql_statements

_ECHO = "return {KEYS[1], ARGV[1]}"


async def test_calls_made_in_one_turn_share_one_pipeline_and_each_gets_its_reply(backend: Backend) -> None:
    redis = await backend.redis()
    coalescer = coalescer_for(redis)
    script = BatchedScript(redis, _ECHO)
    await redis.script_flush()  # the first batch finds the script unknown and loads it
    batches_before = coalescer._batcher.batches

    replies = await asyncio.gather(
        *(script(keys=[f"k{i}"], args=[f"v{i}"]) for i in range(50)),
        coalescer.execute("SET", "coalesce:x", "1"),
        coalescer.execute("GET", "coalesce:x"),
    )

    assert [tuple(map(_text, r)) for r in replies[:50]] == [(f"k{i}", f"v{i}") for i in range(50)]
    assert replies[50] is True
    assert _text(replies[51]) == "1"
    assert coalescer._batcher.batches == batches_before + 1
    assert coalescer_for(redis) is coalescer  # one per client


async def test_an_error_reaches_its_caller_only(backend: Backend) -> None:
    redis = await backend.redis()
    coalescer = coalescer_for(redis)
    await redis.set("coalesce:text", "not a number")

    good = coalescer.execute("INCR", "coalesce:n")
    bad = coalescer.execute("INCR", "coalesce:text")
    other = coalescer.execute("INCR", "coalesce:n")

    assert await good == 1
    with pytest.raises(ResponseError):
        await bad
    assert await other == 2


async def test_a_batch_whose_connection_drops_is_sent_again_whole_as_redis_pys_pipeline_is(
    backend: Backend,
) -> None:
    """A connection error on a batch drops that connection, and the client's retry policy decides
    (as for redis-py's pipeline): the services client retries (`connect_redis`), the batch is sent
    again whole on a new connection; the embedded client does not, and every caller hears it."""
    redis = await backend.redis()
    coalescer = coalescer_for(redis)
    assert await coalescer.execute("SET", "coalesce:dropped", "1") is True
    pooled = await redis.connection_pool.get_connection()  # the one the next batch takes
    await redis.connection_pool.release(pooled)
    sends = []
    real_send = pooled.send_packed_command

    async def send_dropped_once(command: Any, check_health: bool = True) -> None:
        sends.append(command)
        if len(sends) == 1:
            raise RedisConnectionError("the connection dropped")
        await real_send(command, check_health)

    pooled.send_packed_command = send_dropped_once

    replies = await asyncio.gather(
        coalescer.execute("INCR", "coalesce:dropped"),
        coalescer.execute("GET", "coalesce:dropped"),
        return_exceptions=True,
    )

    if pooled.retry_on_error:  # the services backend's client
        assert [replies[0], _text(replies[1])] == [2, "2"]  # applied once: the first send never left
        batches = [sent for sent in sends if b"INCR" in b"".join(sent)]  # not the reconnection's
        assert len(batches) == 2  # the whole batch again, as it was
        assert batches[0] == batches[1]
    else:
        assert all(isinstance(reply, RedisConnectionError) for reply in replies)
        assert len(sends) == 1
        assert _text(await redis.get("coalesce:dropped")) == "1"


async def test_calls_queued_together_and_awaited_in_turn_share_one_pipeline(backend: Backend) -> None:
    redis = await backend.redis()
    coalescer = coalescer_for(redis)
    await redis.set("coalesce:turn", "not a number")
    batches = coalescer._batcher.batches
    calls: list[Awaitable[Any]] = [
        coalescer.execute("INCR", "coalesce:turn"),  # fails, but only once the others have ended
        coalescer.execute("SET", "coalesce:after", "1"),
        Later(functools.partial(_text_of, coalescer.execute("GET", "coalesce:after"))),
        ready("ready"),
    ]

    with pytest.raises(ResponseError):
        await in_turn(calls)

    assert coalescer._batcher.batches == batches + 1  # queued when made: one pipeline, no tasks
    assert await in_turn(calls[1:]) == [True, "1", "ready"]  # each had ended, none was lost


async def _text_of(reply: Awaitable[Any]) -> str:
    return _text(await reply)


async def test_a_cancelled_in_turn_leaves_no_coroutine_never_awaited() -> None:
    blocked: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def held(inner: Awaitable[str]) -> str:
        return await inner

    calls: list[Awaitable[str]] = [blocked, held(ready("x")), Later(lambda: held(ready("y")))]
    waiting = asyncio.ensure_future(in_turn(calls))
    await asyncio.sleep(0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gc.collect()
    assert [w for w in seen if "never awaited" in str(w.message)] == []


async def test_a_failed_batch_fails_each_caller_and_the_next_turn_goes_on() -> None:
    calls: list[list[int]] = []

    async def handle(items: list[int]) -> list[int | BaseException]:
        calls.append(items)
        if 13 in items:
            raise ConnectionError("the server went away")
        return [i * 2 if i != 7 else ValueError("seven") for i in items]

    batcher: TickBatcher[int, int] = TickBatcher(handle, max_batch=3)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)), return_exceptions=True)
    assert calls == [[0, 1, 2], [3, 4, 5], [6, 7]]  # one turn, cut at max_batch
    assert results[:7] == [0, 2, 4, 6, 8, 10, 12]
    assert isinstance(results[7], ValueError)

    failed = await asyncio.gather(batcher.submit(12), batcher.submit(13), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in failed)
    assert await batcher.submit(1) == 2


async def test_a_cancelled_caller_leaves_the_batch_to_the_others() -> None:
    release = asyncio.Event()

    async def handle(items: list[int]) -> list[int]:
        await release.wait()
        return items

    batcher: TickBatcher[int, int] = TickBatcher(handle)
    first, second = batcher.submit(1), batcher.submit(2)
    await asyncio.sleep(0)  # the batch is on its way
    first.cancel()
    release.set()
    assert await second == 2


def chat(text: str) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)])


async def _queued(backend: Backend, n: int) -> list[str]:
    items = [NewJob(f"c{i}", chat(f"hi {i}")) for i in range(n)]
    return list((await backend.store.batches.create(items, tenant="acme", user_id="u")).job_ids)


def _answer() -> CompletionResult:
    usage = Usage(input_tokens=3, output_tokens=2)
    attempt = Attempt(
        deployment="sim-a",
        provider="sim",
        model="m",
        outcome=AttemptOutcome.SUCCESS,
        usage=usage,
        cost_usd=0.001,
    )
    return CompletionResult(
        content="hello",
        deployment="sim-a",
        provider="sim",
        model="m",
        usage=usage,
        cost_usd=0.001,
        latency_ms=1.0,
        simulated=True,
        attempts=[attempt],
        plan_strategy=Strategy.BALANCED,
    )


async def test_starts_and_finishes_made_together_share_statements_and_first_finisher_wins(
    backend: Backend,
) -> None:
    store = backend.store
    job_ids = await _queued(backend, 6)
    writes = store.db.writes
    groups_before = writes.groups

    # A job twice in the same group (a duplicate delivery) starts twice: both runs are counted.
    started = await asyncio.gather(*(store.runs.start(j, run=1, worker="w") for j in [*job_ids, job_ids[0]]))
    assert all(isinstance(s, StartedJob) for s in started)
    assert [s.starts for s in started if isinstance(s, StartedJob) and s.id == job_ids[0]] == [1, 2]
    assert writes.groups - groups_before <= 2  # one group (two when a group was already committing)

    jobs = [s for s in started if isinstance(s, StartedJob)]
    answer = _answer()
    applied = await asyncio.gather(
        *(
            store.runs.finish(job, run=n, attempts_made=answer.attempts, result=answer)
            for n, job in enumerate(jobs, start=1)
        )
    )
    # Every job finishes once: the second finish of job 0 (run 7) finds it finished.
    assert applied == [True] * 6 + [False]
    for job_id in job_ids:
        record = await store.jobs.get(job_id, tenant=ANY_TENANT)
        assert record.status is JobStatus.SUCCEEDED
    # Both runs of job 0 made a call the provider billed: both are in the ledger, once each.
    rows = await store.ledger.rows(batch_id=jobs[0].batch_id)
    assert sorted(r["run"] for r in rows if r["job_id"] == job_ids[0]) == [1, 7]
    assert len(rows) == 7


async def test_reads_of_jobs_made_in_one_turn_share_a_query_per_tenant(backend: Backend) -> None:
    """Waiters woken together (jobs finished in one group commit) read their jobs in one query; each
    read still sees only its tenant's job, another tenant's the same NotFoundError as a missing one."""
    job_ids = await _queued(backend, 4)
    with sql_statements(backend.store) as statements:
        reads = await asyncio.gather(
            *(backend.store.jobs.get(job_id, tenant="acme") for job_id in [*job_ids, job_ids[0]]),
            backend.store.jobs.get(job_ids[1], tenant=ANY_TENANT),
            backend.store.jobs.get(job_ids[2], tenant="globex"),
            backend.store.jobs.get("job_nope", tenant="acme"),
            return_exceptions=True,
        )
    assert len([s for s in statements if "FROM jobs" in s]) == 3  # acme's, any tenant's, globex's
    assert [r.id for r in reads[:6] if isinstance(r, JobRecord)] == [*job_ids, job_ids[0], job_ids[1]]
    assert all(isinstance(r, JobRecord) and r.tenant == "acme" for r in reads[:6])
    for refused, job_id in zip(reads[6:], [job_ids[2], "job_nope"], strict=True):
        assert isinstance(refused, NotFoundError)
        assert str(refused) == str(NotFoundError("job", job_id))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
