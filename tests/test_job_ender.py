"""arq's end of a delivery as one coalesced script (storage/bus/queue.py JobEnder): for every branch
of arq's own `Worker.finish_job`, the same keys are left behind. Both backends."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from arq.constants import abort_jobs_ss, result_key_prefix
from arq.worker import Worker
from redis.asyncio import Redis

from storage import keys
from storage.bus.queue import JobEnder
from tests.backends import Backend

QUEUE = "ender:queue"
JOB = "job-1"

# (finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress)
CASES = {
    "finished, no result kept": (True, None, None, False, None, None),
    "finished, result kept 60 s": (True, b"{}", 60.0, False, None, None),
    "finished, result kept forever": (True, b"{}", 60.0, True, None, None),
    "retried after a delay": (False, None, None, False, 5_000, None),
    "back in the queue, lease kept": (False, None, None, False, None, 30.0),
    "finished, lease kept": (True, None, None, False, None, 30.0),
}


async def _seed(redis: Redis) -> None:
    await redis.flushdb()
    await redis.set(keys.ARQ_IN_PROGRESS_PREFIX + JOB, "1", px=15_000)
    await redis.set(keys.ARQ_RETRY_PREFIX + JOB, 2)
    await redis.set(keys.ARQ_JOB_PREFIX + JOB, b"payload", px=86_400_000)
    await redis.zadd(QUEUE, {JOB: 1_000, "other": 2_000})
    await redis.zadd(abort_jobs_ss, {JOB: 1})


async def _state(redis: Redis) -> dict[str, Any]:
    """Every key with its value and whether (roughly how long) it expires."""
    found: dict[str, Any] = {}
    for name in sorted(await redis.keys("*")):
        key = name.decode() if isinstance(name, bytes) else name
        kind = await redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "zset":
            value: Any = await redis.zrange(key, 0, -1, withscores=True)
        else:
            value = await redis.get(key)
        ttl = await redis.pttl(key)
        found[key] = (value, "no expiry" if ttl == -1 else round(ttl / 1000))
    return found


@pytest.mark.parametrize("case", list(CASES))
async def test_the_script_leaves_what_arqs_finish_job_leaves(backend: Backend, case: str) -> None:
    redis = await backend.redis()
    args = CASES[case]

    await _seed(redis)
    arq_worker = SimpleNamespace(pool=redis, queue_name=QUEUE)
    await Worker.finish_job(arq_worker, JOB, *args)  # type: ignore[arg-type]
    by_arq = await _state(redis)

    await _seed(redis)
    await JobEnder(redis, QUEUE).end(JOB, *args)
    assert await _state(redis) == by_arq
    if args[1] is not None:  # the cases that keep a result do keep it
        assert result_key_prefix + JOB in by_arq
