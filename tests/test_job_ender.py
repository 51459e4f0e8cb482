"""arq's end of a delivery as one coalesced script (storage/bus/queue.py JobEnder): for every branch
of arq's own `Worker.finish_job`, the same keys are left behind, whether the job is where a claim
put it (the queue's running set, its queue score remembered by the worker) or back in the queue
(queued again during its delivery, as a deferral does; or claimed by a plain arq worker). A
delivery that outlived its lease leaves the job to the claim that took it next. Both backends."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from arq.constants import abort_jobs_ss, result_key_prefix
from arq.worker import Worker
from redis.asyncio import Redis

from storage import keys
from storage.bus.queue import Deferrals, JobClaimer, JobEnder
from tests.backends import Backend

QUEUE = "ender:queue"
JOB = "job-1"
TOKEN = "w1:7"  # the lease's value: the token of the claim that took the job

# (finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress)
CASES = {
    "finished, no result kept": (True, None, None, False, None, None),
    "finished, result kept 60 s": (True, b"{}", 60.0, False, None, None),
    "finished, result kept forever": (True, b"{}", 60.0, True, None, None),
    "retried after a delay": (False, None, None, False, 5_000, None),
    "back in the queue, lease kept": (False, None, None, False, None, 30.0),
    "finished, lease kept": (True, None, None, False, None, 30.0),
}


async def _seed(redis: Redis, *, claimed: bool = False) -> None:
    """The job mid-delivery: in arq's queue at score 1,000, or (`claimed`) moved by a claim from
    there to the running set."""
    await redis.flushdb()
    await redis.set(keys.ARQ_IN_PROGRESS_PREFIX + JOB, TOKEN, px=15_000)
    await redis.set(keys.ARQ_RETRY_PREFIX + JOB, 2)
    await redis.set(keys.ARQ_JOB_PREFIX + JOB, b"payload", px=86_400_000)
    await redis.zadd(QUEUE, {"other": 2_000})
    if claimed:
        await redis.zadd(keys.queue_running(QUEUE), {JOB: 99_000})
    else:
        await redis.zadd(QUEUE, {JOB: 1_000})
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


@pytest.mark.parametrize("claimed", [True, False], ids=["claimed", "in the queue"])
@pytest.mark.parametrize("case", list(CASES))
async def test_the_script_leaves_what_arqs_finish_job_leaves(
    backend: Backend, case: str, claimed: bool
) -> None:
    redis = await backend.redis()
    args = CASES[case]

    await _seed(redis)
    arq_worker = SimpleNamespace(pool=redis, queue_name=QUEUE)
    await Worker.finish_job(arq_worker, JOB, *args)  # type: ignore[arg-type]
    by_arq = await _state(redis)

    await _seed(redis, claimed=claimed)
    await JobEnder(redis, QUEUE).end(JOB, *args, claimed_score=1_000, token=TOKEN)
    assert await _state(redis) == by_arq  # the running set emptied, so gone
    if args[1] is not None:  # the cases that keep a result do keep it
        assert result_key_prefix + JOB in by_arq


async def test_a_claimed_job_deferred_keeps_its_turn_when_its_delivery_ends(backend: Backend) -> None:
    """A deferral puts the claimed job back on the queue at its turn; the end of the delivery (arq's
    Retry without a delay) leaves it there and empties the running set."""
    redis = await backend.redis()
    await _seed(redis, claimed=True)
    await Deferrals(redis, QUEUE).defer(JOB, run_at_ms=50_000, payload=None, give_back_try=None)
    await JobEnder(redis, QUEUE).end(JOB, False, None, None, False, None, None, claimed_score=1_000)
    assert await redis.zscore(QUEUE, JOB) == 50_000
    assert await redis.zcard(keys.queue_running(QUEUE)) == 0


async def test_a_job_cancelled_while_claimed_is_not_queued_again(backend: Backend) -> None:
    """A cancel takes the job out of the running set: neither its deferral nor its unfinished end
    puts it back on the queue."""
    redis = await backend.redis()
    await _seed(redis, claimed=True)
    await redis.zrem(keys.queue_running(QUEUE), JOB)  # what Client.cancel does to a claimed job
    await Deferrals(redis, QUEUE).defer(JOB, run_at_ms=50_000, payload=None, give_back_try=None)
    await JobEnder(redis, QUEUE).end(JOB, False, None, None, False, None, None, claimed_score=1_000)
    assert await redis.zscore(QUEUE, JOB) is None
    assert await redis.zrange(QUEUE, 0, -1) == [b"other"]


async def test_a_delivery_that_outlived_its_lease_leaves_the_next_claim_alone(backend: Backend) -> None:
    """Delivery A's lease lapsed (its worker stalled) and a claim took the job again (B). A's end (a
    retry) must not delete B's lease, take the job out of the running set or queue it again: B runs
    it, and should B's worker die, the claims' crash recovery must still find it."""
    redis = await backend.redis()
    await redis.flushdb()
    lease, running = keys.ARQ_IN_PROGRESS_PREFIX + JOB, keys.queue_running(QUEUE)
    await redis.set(keys.ARQ_JOB_PREFIX + JOB, b"payload")
    await redis.zadd(QUEUE, {JOB: 1_000})
    claimer, ender = JobClaimer(redis, QUEUE), JobEnder(redis, QUEUE)
    assert (await claimer.claim(limit=1, lease_ms=5_000, now_ms=10_000, token="a:1")).jobs == [(JOB, 1_000)]
    await redis.delete(lease)  # A's lease ran out
    # The next claim puts the job back at its lease's expiry and takes it: delivery B.
    assert (await claimer.claim(limit=1, lease_ms=5_000, now_ms=16_000, token="b:1")).jobs == [(JOB, 15_000)]
    retry = (False, None, None, False, 5_000, None)

    await ender.end(JOB, *retry, claimed_score=1_000, token="a:1")
    assert await redis.get(lease) == b"b:1"
    assert await redis.zscore(running, JOB) == 21_000
    assert await redis.zscore(QUEUE, JOB) is None

    await ender.end(JOB, True, None, None, False, None, None, claimed_score=15_000, token="b:1")
    assert not await redis.exists(lease, running, keys.ARQ_JOB_PREFIX + JOB)
    assert await redis.zscore(QUEUE, JOB) is None


async def test_a_delivery_whose_lease_lapsed_unclaimed_still_ends_its_own_entry(backend: Backend) -> None:
    """No other claim took the job: a lease gone is no one else's, so the end (a retry) takes the
    job out of the running set and back on the queue, as when the lease held."""
    redis = await backend.redis()
    await _seed(redis, claimed=True)
    await redis.delete(keys.ARQ_IN_PROGRESS_PREFIX + JOB)
    await JobEnder(redis, QUEUE).end(
        JOB, False, None, None, False, 5_000, None, claimed_score=1_000, token=TOKEN
    )
    assert await redis.zcard(keys.queue_running(QUEUE)) == 0
    assert await redis.zscore(QUEUE, JOB) == 6_000


async def test_a_renewal_pushes_back_only_the_leases_its_claims_still_own(backend: Backend) -> None:
    """The worker's renewal (JobClaimer.renew): a lease holding the claim's token gets the new
    expiry and its running entry the new score; one another claim took (a stalled delivery's job),
    or one gone, is left as it is and reported; with no token, any live lease is renewed."""
    redis = await backend.redis()
    await redis.flushdb()
    running = keys.queue_running(QUEUE)
    leases = {"ours": TOKEN, "taken": TOKEN, "lapsed": TOKEN, "arqs": "1"}
    for job_id, value in leases.items():
        if job_id != "lapsed":
            await redis.set(keys.ARQ_IN_PROGRESS_PREFIX + job_id, value, px=1_000)
        await redis.zadd(running, {job_id: 5_000})
    await redis.set(keys.ARQ_IN_PROGRESS_PREFIX + "taken", "w2:3", px=1_000)  # the next claim's

    lost = await JobClaimer(redis, QUEUE).renew(
        {"ours": TOKEN, "taken": TOKEN, "lapsed": TOKEN, "arqs": "", "ended": TOKEN},
        lease_ms=60_000,
        now_ms=10_000,
    )

    assert sorted(lost) == ["ended", "lapsed", "taken"]
    for job_id in ("ours", "arqs"):
        assert await redis.pttl(keys.ARQ_IN_PROGRESS_PREFIX + job_id) > 2_000
        assert await redis.zscore(running, job_id) == 70_000
    assert await redis.get(keys.ARQ_IN_PROGRESS_PREFIX + "taken") == b"w2:3"
    assert await redis.pttl(keys.ARQ_IN_PROGRESS_PREFIX + "taken") <= 1_000
    # Entries not renewed keep their score: the claims' crash recovery finds the lapsed one.
    assert await redis.zscore(running, "taken") == await redis.zscore(running, "lapsed") == 5_000
    assert await redis.zscore(running, "ended") is None  # XX: an ended job does not come back
