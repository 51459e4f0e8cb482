"""The bulk paths of a big submission store and queue exactly what the general ones did.

New jobs' rows go in as driver-bound tuples (COPY on PostgreSQL) instead of SQLAlchemy's
`insert(jobs)`; arq payloads are made from a template instead of `serialize_job` per job.
"""

from __future__ import annotations

from typing import Any

import pytest
from arq.jobs import serialize_job
from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from router_core.models import ChatRequest, Preferences
from storage import keys
from storage.bus import queue
from storage.bus.events import EventBus
from storage.bus.queue import JOB_FUNCTION, _Payloads, deserialize, enqueue_jobs, serialize
from storage.jobs import NewJob
from storage.sql import new_jobs
from storage.sql.new_jobs import JobOwner, _EncodedJSON, encode_jobs, insert_jobs, job_rows, request_json
from storage.sql.schema import jobs
from tests.backends import Backend

_REQUESTS = [
    ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]}),
    ChatRequest.model_validate(
        {
            "messages": [{"role": "user", "content": 'é \u2028 "quoted"'}],
            "model": "auto",
            "temperature": 0.5,
            "user": "end-user-1",
            "metadata": {"k": "v", "ü": "x"},
        }
    ),
]


async def test_bulk_rows_read_back_as_sqlalchemy_inserts_them(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied: list[bool] = []
    copy = new_jobs._copy

    async def spy(conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> bool:
        copied.append(await copy(conn, rows))
        return copied[-1]

    monkeypatch.setattr(new_jobs, "_copy", spy)
    batch_id = await backend.store.batches.open(tenant="t1", user_id="u1")
    owner = JobOwner(batch_id, "t1", "u1", backend.store.batches._db.now())
    items = [NewJob(f"c{n}", request, stream=n == 1) for n, request in enumerate(_REQUESTS)]
    bulk = job_rows(encode_jobs(items), owner, backend.store.engine.dialect)
    # What `Batches` inserted before: SQLAlchemy's insert of Python values, `request` serialized.
    general = [
        {
            "id": f"job_general_{n}",
            "batch_id": batch_id,
            "seq": 10 + n,
            "custom_id": f"g{n}",
            "tenant": "t1",
            "user_id": "u1",
            "request": item.request.model_dump_json(exclude_defaults=True),
            "stream": item.stream,
            "status": "queued",
            "run": 0,
            "end_user": item.request.user,
            "metadata": item.request.metadata,
            "created_at": owner.created_at,
        }
        for n, item in enumerate(items)
    ]

    async def write(conn: AsyncConnection) -> None:
        await conn.execute(select(1))  # as in `Batches`: the transaction has begun (COPY joins it)
        await insert_jobs(conn, bulk)
        statement = insert(jobs).values(request=bindparam("request", type_=_EncodedJSON()))
        await conn.execute(statement, general)

    await backend.store.batches._db.writes.run(write)
    async with backend.store.engine.connect() as conn:
        query = select(jobs).where(jobs.c.batch_id == batch_id).order_by(jobs.c.seq)
        rows = (await conn.execute(query)).all()
    assert len(rows) == 4
    # PostgreSQL's rows went in by COPY, in the transaction (not by the fallback executemany).
    assert copied == ([True] if backend.store.engine.dialect.name == "postgresql" else [])
    stored: list[dict[str, Any]] = [dict(row._mapping) for row in rows]
    for mine, theirs in zip(stored[:2], stored[2:], strict=True):
        for key in ("id", "seq", "custom_id"):
            mine.pop(key), theirs.pop(key)
        assert mine == theirs
    assert stored[1]["metadata"] == {"k": "v", "ü": "x"}
    assert stored[1]["end_user"] == "end-user-1"
    assert stored[0]["metadata"] is None
    assert stored[0]["starts"] == 0
    assert stored[1]["stream"] is True


async def test_bulk_rows_go_with_their_transaction(backend: Backend) -> None:
    batch_id = await backend.store.batches.open(tenant="t1", user_id="u1")
    owner = JobOwner(batch_id, "t1", "u1", backend.store.batches._db.now())
    rows = job_rows(encode_jobs([NewJob("a", _REQUESTS[0])]), owner, backend.store.engine.dialect)

    async def write(conn: AsyncConnection) -> None:
        await conn.execute(select(1))
        await insert_jobs(conn, rows)
        raise RuntimeError("the transaction fails after the insert")

    with pytest.raises(RuntimeError):
        await backend.store.batches._db.writes.run(write)
    async with backend.store.engine.connect() as conn:
        assert (await conn.execute(select(jobs.c.id).where(jobs.c.batch_id == batch_id))).all() == []


@pytest.mark.parametrize(
    "preferences",
    [
        None,
        {},
        {"strategy": "balanced"},
        {"strategy": "cost"},
        {"weights": {"cost": 1.0}},
        {"weights": {"cost": 2.0}, "max_latency_ms": 5},
        {"strategy": "fallback_chain", "chain": ["a", "b"], "allow_fallbacks": False},
    ],
)
def test_request_json_is_pydantics_dump_without_defaults(preferences: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x", "name": None}], "model": "auto"}
    if preferences is not None:
        body["preferences"] = preferences
    request = ChatRequest.model_validate(body)
    assert request_json(request) == request.model_dump_json(exclude_defaults=True)


def test_a_request_naming_no_preferences_has_default_ones_of_its_own() -> None:
    """They are copied from one made once (no validation per request): the same as `Preferences()`."""
    one, other = (ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}]}) for _ in "ab")
    assert one.preferences == Preferences()
    assert one.preferences.model_fields_set == set()
    assert one.model_fields_set == {"messages"}
    assert one.preferences is not other.preferences
    assert one.preferences.weights is not other.preferences.weights


@pytest.mark.parametrize(
    ("job_id", "job_try"), [("job_3f9c00aa", None), ("job_x", 4), ('odd "id" é', None), ("a b\\c", 2)]
)
def test_payloads_are_the_bytes_arq_serializes(job_id: str, job_try: int | None) -> None:
    expected = serialize_job(JOB_FUNCTION, (job_id,), {}, job_try, 1_700_000_000_123, serializer=serialize)
    assert _Payloads(1_700_000_000_123).of(job_id, job_try) == expected


async def test_the_first_enqueue_call_sets_the_batch_total_before_its_jobs(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`enqueue_jobs(opening=...)`: the batch's total goes in with its first chunk (one call, no
    `open_batch` round trip of its own); later chunks and a re-queue leave it alone."""
    monkeypatch.setattr(queue, "_ENQUEUE_CHUNK", 2)  # three jobs: two calls
    redis = await backend.redis()
    bus = EventBus(redis, retention_s=600)
    queue_name = backend.settings.queue_name
    ids = ["job_1", "job_2", "job_3"]
    await enqueue_jobs(redis, ids, queue_name=queue_name, opening=bus.opening("batch_x", 3))
    progress = keys.batch_progress("batch_x")
    assert await redis.hgetall(progress) == {b"total": b"3"}  # type: ignore[misc]
    assert 0 < await redis.ttl(progress) <= 600
    assert sorted(await redis.zrange(queue_name, 0, -1)) == [i.encode() for i in ids]
    for job_id in ids:
        payload = deserialize(await redis.get(keys.ARQ_JOB_PREFIX + job_id))
        assert (payload["f"], payload["a"]) == (JOB_FUNCTION, [job_id])

    await redis.hset(progress, "total", "9")  # type: ignore[misc]
    await enqueue_jobs(redis, ["job_4"], queue_name=queue_name)
    assert await redis.hget(progress, "total") == b"9"  # type: ignore[misc]
    assert await redis.zscore(queue_name, "job_4") is not None
