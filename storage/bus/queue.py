"""The queue format producer and workers share: arq's job layout, a JSON serializer, bulk enqueue.

A new job carries only its routeq job id; the request itself lives in SQL. A job deferred for
capacity carries its request too (`route_job(job_id, carried=...)`), so that its next delivery can
ask for admission before it touches SQL. Jobs are serialized
as JSON, not arq's default pickle, so whoever can write to Redis cannot make a worker run code.

    enqueue_jobs   new jobs: payload + queue entry + a wake-up ping for idle workers, one script call
                   per 2,000 jobs (the first may also open the batch's progress: `BatchOpening`)
    JobClaimer     a worker takes due jobs nobody runs: one Lua call, which moves them from the queue
                   to the queue's running set (`keys.queue_running`) until their delivery ends
    JobEnder       arq's end of a delivery (`finish_job`), the job out of the running set too
    Deferrals      a job waiting for capacity back on the queue at its turn, one Lua call
    orphans        which unfinished jobs nothing in Redis will run (no lease, no payload or entry)
    requeue_jobs   orphans back on the queue, their next arq try after the last one SQL recorded
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, expires_extra_ms, result_key_prefix
from arq.jobs import serialize_job
from pydantic_core import from_json, to_json
from redis.asyncio import Redis

from storage import keys
from storage.bus.coalesce import BatchedScript

__all__ = [
    "JOB_FUNCTION",
    "BatchOpening",
    "Claim",
    "Deferrals",
    "JobClaimer",
    "JobEnder",
    "carried_request",
    "carried_requests",
    "carries_single",
    "deserialize",
    "enqueue_jobs",
    "orphans",
    "requeue_jobs",
    "serialize",
]

JOB_FUNCTION = "route_job"
# Ids per pipeline: large enough to amortise round trips, small enough to not block Redis for long.
_ENQUEUE_CHUNK = 2_000


def serialize(obj: Any) -> bytes:
    """arq's job serializer: compact JSON, by pydantic-core (a few times `json.dumps`'s speed)."""
    return to_json(obj)


def deserialize(raw: bytes) -> Any:
    return from_json(raw)


@dataclass(frozen=True, slots=True)
class BatchOpening:
    """A batch's progress total (`EventBus.opening`), set by the first enqueue call before its jobs."""

    key: str  # routeq:progress:<batch>
    total: int
    retention_s: int


async def enqueue_jobs(
    redis: ArqRedis,
    job_ids: Sequence[str],
    *,
    queue_name: str,
    keep_scheduled: bool = False,
    carried: Sequence[Mapping[str, str] | None] | None = None,
    opening: BatchOpening | None = None,
) -> None:
    """Put `job_ids` on the arq queue, one round trip (one script call) per 2,000 jobs.

    arq's `enqueue_job` costs three round trips per job (WATCH, EXISTS, MULTI/EXEC) to dedupe ids;
    routeq's ids are fresh and workers are idempotent on the SQL status, so SET + ZADD write the
    same keys arq would. `keep_scheduled`: an id already in the queue keeps
    its run-at time (ZADD NX), so re-queuing does not hurry a job deferred for capacity.
    `carried`: per job, what its payload carries besides its id (`carried_requests`), or None.
    `opening`: the batch's progress total, set by the first call before any job is queued (what
    `EventBus.open_batch` does, without a round trip of its own). The calls go through the client's
    `Coalescer`: concurrent submitters' enqueues share pipelines.
    """
    jobs = dict.fromkeys(job_ids)
    extra = None if carried is None else dict(zip(job_ids, carried, strict=True))
    await _enqueue(redis, jobs, queue_name, keep_scheduled=keep_scheduled, carried=extra, opening=opening)


def carried_request(
    batch_id: str, tenant: str, request: str, *, max_bytes: int, single: bool = False
) -> dict[str, str] | None:
    """What a job's payload carries: its request (JSON text, as SQL stores it), tenant and batch, for
    a worker to ask for admission before any SQL write; None for a request over `max_bytes` (Redis
    holds every carried request until its job runs). `single`: the batch is a batch of one (no cap,
    no window: the worker need not read them)."""
    if len(request) > max_bytes:
        return None
    carried = {"request": request, "tenant": tenant, "batch_id": batch_id}
    if single:
        carried["single"] = "1"
    return carried


def carries_single(carried: Mapping[str, Any] | None) -> bool:
    """Whether a payload's `carried` says its job is a batch of one (`carried_request(single=True)`)."""
    return carried is not None and carried.get("single") == "1"


def carried_requests(
    batch_id: str, tenant: str, requests: Sequence[str], *, max_bytes: int, single: bool = False
) -> list[Mapping[str, str] | None]:
    """`carried_request` for each of a new batch's requests."""
    return [
        carried_request(batch_id, tenant, request, max_bytes=max_bytes, single=single) for request in requests
    ]


async def requeue_jobs(redis: Redis, last_runs: Mapping[str, int], *, queue_name: str) -> None:
    """Put jobs that were already delivered back on the queue; `last_runs` maps id -> `jobs.run`.

    arq numbers a job's tries in `arq:retry:<id>`, which it deletes when it drops a job (and which a
    Redis data loss takes too), so a re-queued job would start again at try 1 and its attempts and
    ledger rows, keyed by (job, run, attempt_no), would collide with the first run's and be lost
    (`ON CONFLICT DO NOTHING`). The payload's `job_try` makes arq number the next try after the
    last one SQL recorded.
    """
    await _enqueue(redis, {job_id: run + 1 for job_id, run in last_runs.items()}, queue_name)


async def _enqueue(
    redis: Redis,
    tries: Mapping[str, int | None],
    queue_name: str,
    *,
    keep_scheduled: bool = False,
    carried: Mapping[str, Mapping[str, str] | None] | None = None,
    opening: BatchOpening | None = None,
) -> None:
    now_ms = int(time.time() * 1000)
    job_ids = list(tries)
    payloads = _Payloads(now_ms)
    script = BatchedScript(redis, _ENQUEUE)
    flags = [expires_extra_ms, now_ms, "NX" if keep_scheduled else "", keys.queue_wake_channel(queue_name)]
    for start in range(0, len(job_ids), _ENQUEUE_CHUNK):
        chunk = job_ids[start : start + _ENQUEUE_CHUNK]
        job_keys = [keys.ARQ_JOB_PREFIX + job_id for job_id in chunk]
        extra = dict.fromkeys(chunk) if carried is None else carried
        progress: list[Any] = ["", 0] if opening is None else [opening.total, opening.retention_s]
        opened = [] if opening is None else [opening.key]
        opening = None  # the first call sets it
        payload_args = (payloads.of(job_id, tries[job_id], extra[job_id]) for job_id in chunk)
        args = [*flags, *progress, *payload_args, *chunk]
        await script(keys=[queue_name, *job_keys, *opened], args=args)


# KEYS[1] the queue, KEYS[2..n+1] the jobs' payload keys, then the batch's progress hash when
# ARGV[5] is a total. ARGV: [1] payload TTL (ms), [2] the queue score (now, ms), [3] "NX" to keep the
# score of an id already queued, [4] the wake-up channel, [5] the batch's total or "", [6] the
# progress hash's TTL (s), [7..n+6] the payloads, [n+7..2n+6] the ids.
# One call per chunk instead of a SET per job: redis-py builds one command, not 2,000 (most of the
# CPU a big submit spent on Redis), and the chunk lands at once. The batch's total goes in first
# (workers count a job's end against it), queue entries after their payloads and the ping after
# the entries: a worker never sees an id without its payload, and a woken worker finds them.
_ENQUEUE = """
local n = #KEYS - 1
local ttl, score, nx, channel, total = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if total ~= '' then
  n = n - 1
  redis.call('HSET', KEYS[n + 2], 'total', total)
  redis.call('EXPIRE', KEYS[n + 2], ARGV[6])
end
for i = 1, n do
  redis.call('SET', KEYS[i + 1], ARGV[i + 6], 'PX', ttl)
end
-- ZADD by slices: unpack's arguments must fit Lua's C stack.
for first = 1, n, 500 do
  local members = {}
  for i = first, math.min(first + 499, n) do
    members[#members + 1] = score
    members[#members + 1] = ARGV[n + 6 + i]
  end
  if nx == 'NX' then
    redis.call('ZADD', KEYS[1], 'NX', unpack(members))
  else
    redis.call('ZADD', KEYS[1], unpack(members))
  end
end
redis.call('PUBLISH', channel, '')
return n
"""

# An id that JSON writes as it is, between quotes (routeq's ids are `job_<hex>`).
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:-]*")
_MARK = "routeq-job-id"


class _Payloads:
    """arq's job payloads (`serialize_job` with routeq's JSON serializer), from a template.

    `serialize_job` builds a dict and JSON-encodes it per job; the payloads of one enqueue differ
    only by the id (and the try, for re-queued jobs), so the bytes around the id are made once by
    `serialize_job` itself, and each payload is those bytes around the id's JSON: the same bytes.
    """

    def __init__(self, now_ms: int) -> None:
        self._now_ms = now_ms
        self._templates: dict[int | None, tuple[bytes, bytes]] = {}

    def of(self, job_id: str, job_try: int | None, carried: Mapping[str, str] | None = None) -> bytes:
        if carried is not None:  # a payload carrying the job's request: made whole
            kwargs = {"carried": carried}
            return serialize_job(JOB_FUNCTION, (job_id,), kwargs, job_try, self._now_ms, serializer=serialize)
        template = self._templates.get(job_try)
        if template is None:
            whole = serialize_job(JOB_FUNCTION, (_MARK,), {}, job_try, self._now_ms, serializer=serialize)
            before, _, after = whole.partition(serialize(_MARK))
            template = self._templates[job_try] = (before, after)
        before, after = template
        if _PLAIN_ID.fullmatch(job_id):
            return b'%s"%s"%s' % (before, job_id.encode(), after)
        return before + serialize(job_id) + after


# KEYS: the queue, its running set, the job's payload, its try counter. ARGV: job id, run-at (ms),
# payload ('' = keep it), payload TTL (ms), the try to give back ('' = none).
# The score is set, not bumped as arq's Retry(defer) does, so the job comes back at its turn exactly.
# The delivery deferring it holds it in the running set (a claim took it off the queue); it goes
# back on the queue here. Nothing is re-created: a job cancelled meanwhile (in neither set) or whose
# payload is gone stays gone.
_DEFER = """
local queue, running, job_key, retry_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, score, payload, ttl, given = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if payload ~= '' then
  redis.call('SET', job_key, payload, 'PX', ttl, 'XX')
else
  redis.call('PEXPIRE', job_key, ttl)
end
if redis.call('EXISTS', job_key) == 1
    and (redis.call('ZSCORE', queue, id) or redis.call('ZSCORE', running, id)) then
  redis.call('ZADD', queue, score, id)
end
-- Only if no other delivery counted a try since ours (a duplicate run keeps its own number).
if given ~= '' and redis.call('GET', retry_key) == given then redis.call('DECR', retry_key) end
return 0
"""


class Deferrals:
    """Jobs waiting for capacity put back on one queue (the script is loaded once)."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._queue_name = queue_name
        self._script = redis.register_script(_DEFER)

    async def defer(
        self,
        job_id: str,
        *,
        run_at_ms: int,
        payload: bytes | None,
        give_back_try: int | None,
    ) -> None:
        """Queue `job_id` again for `run_at_ms`, before arq's own end of the delivery.

        Args:
            payload: the job's new arq payload (it carries the request), None to keep the old one;
                either way it lasts a day past the new run time, as arq's enqueue makes it last.
            give_back_try: this delivery's arq try, when the delivery was not a run (refused
                admission, nothing recorded under its number): the next delivery gets it again.
        """
        ttl_ms = max(0, run_at_ms - int(time.time() * 1000)) + expires_extra_ms
        args: list[str | int | bytes] = [
            job_id,
            run_at_ms,
            payload or b"",
            ttl_ms,
            "" if give_back_try is None else give_back_try,
        ]
        job_keys = [
            self._queue_name,
            keys.queue_running(self._queue_name),
            keys.ARQ_JOB_PREFIX + job_id,
            keys.ARQ_RETRY_PREFIX + job_id,
        ]
        await self._script(keys=job_keys, args=args)

    @staticmethod
    def payload(
        job_id: str, carried: Mapping[str, Any] | None, *, job_try: int | None, enqueued_ms: int
    ) -> bytes:
        """The arq payload of `route_job(job_id, carried=...)`."""
        kwargs = {} if carried is None else {"carried": dict(carried)}
        return serialize_job(JOB_FUNCTION, (job_id,), kwargs, job_try, enqueued_ms, serializer=serialize)


async def orphans(redis: Redis, job_ids: Sequence[str], *, queue_name: str) -> list[str]:
    """Of `job_ids` (unfinished in SQL), those that nothing in Redis will ever run.

    A job some worker runs has a live lease (`arq:in-progress:<id>`, renewed while its worker
    lives); a job waiting to run (new, deferred, or retrying after an outage) has both its payload
    and its queue entry; a claimed job whose worker died has its payload and its entry in the
    running set, and the next claim puts it back on the queue. A job with none of these was
    dropped: arq's job timeout ended its run while a write of it was still queued for the database,
    its payload expired (a day) while it waited, or Redis lost its data. Checked in one round trip
    per 2,000 jobs, each chunk in one MULTI so a job cannot move between the checks; a job that
    finishes meanwhile is for the caller to re-read.
    """
    found: list[str] = []
    running = keys.queue_running(queue_name)
    for start in range(0, len(job_ids), _ENQUEUE_CHUNK):
        chunk = job_ids[start : start + _ENQUEUE_CHUNK]
        async with redis.pipeline(transaction=True) as pipe:
            for job_id in chunk:
                pipe.exists(keys.ARQ_IN_PROGRESS_PREFIX + job_id)
                pipe.exists(keys.ARQ_JOB_PREFIX + job_id)
                pipe.zscore(queue_name, job_id)
                pipe.zscore(running, job_id)
            replies = await pipe.execute()
        for n, job_id in enumerate(chunk):
            leased, payload, queued, claimed = replies[4 * n : 4 * n + 4]
            if not leased and not (payload and (queued is not None or claimed is not None)):
                found.append(job_id)
    return found


# The most queue entries the claim script reads at a time (its first read is a few times the jobs
# it wants: past the running set, the head of the queue is jobs waiting to run).
_CLAIM_PAGE = 500

# KEYS[1] the queue, KEYS[2] its running set. ARGV: [1] now (ms, the clock arq scores with), [2] most
# jobs to claim, [3] lease (ms), [4] the in-progress key prefix, [5] the most entries read at a time,
# [6] the lease's value: this claim's token, which the delivery's end (_END) shows to prove it still
# owns the job.
# arq's own start (worker.start_jobs) checks one id per WATCH/EXISTS/ZSCORE/MULTI transaction and
# only among the first `queue_read_limit` due ids, where jobs running elsewhere stay until they
# end. Here a claimed job leaves the queue for the running set (scored by its lease's expiry) until
# arq's end of its delivery (_END), so the due ids a claim reads are jobs waiting to run, however
# many run fleet-wide; each is still claimed only without a live lease (a plain arq worker's job, a
# replayed enqueue of a running one), with one exactly as arq would. First, running jobs whose lease
# ran out (their worker died) go back to the queue at their lease's expiry, ahead of newer jobs;
# a lease renewed meanwhile moves its entry's score instead.
# Returns the claimed ids with their queue scores, then the next future score.
_CLAIM = """
local queue, running = KEYS[1], KEYS[2]
local now, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local lease, prefix, most, token = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6]
local lapsed = redis.call('ZRANGEBYSCORE', running, '-inf', now, 'WITHSCORES', 'LIMIT', 0, most)
for i = 1, #lapsed, 2 do
  local id = lapsed[i]
  local left = redis.call('PTTL', prefix .. id)
  if left == -2 then
    redis.call('ZREM', running, id)
    redis.call('ZADD', queue, 'NX', lapsed[i + 1], id)
  else
    redis.call('ZADD', running, now + (left > 0 and left or lease), id)
  end
end
local claimed, first, page = {}, 0, math.min(most, math.max(16, 4 * want))
while #claimed < 2 * want do
  local rows = redis.call('ZRANGE', queue, first, first + page - 1, 'WITHSCORES')
  local ids, scores = {}, {}
  for i = 1, #rows, 2 do
    if tonumber(rows[i + 1]) > now then break end
    ids[#ids + 1], scores[#scores + 1] = rows[i], rows[i + 1]
  end
  local leases = {}
  for i = 1, #ids do leases[i] = prefix .. ids[i] end
  local taken = 0
  -- A page of leased jobs (rare: see above) costs one EXISTS.
  if #ids > 0 and redis.call('EXISTS', unpack(leases)) < #ids then
    for i = 1, #ids do
      if redis.call('EXISTS', leases[i]) == 0 then
        redis.call('SET', leases[i], token, 'PX', lease)
        redis.call('ZREM', queue, ids[i])
        redis.call('ZADD', running, now + lease, ids[i])
        claimed[#claimed + 1] = ids[i]
        claimed[#claimed + 1] = scores[i]
        taken = taken + 1
        if #claimed >= 2 * want then break end
      end
    end
  end
  if #ids < page then break end
  -- By rank, not ZRANGEBYSCORE's LIMIT offset (a page deep in a long queue costs no more than one
  -- at its head); the jobs taken from this page have left it.
  first = first + #ids - taken
  page = math.min(most, 4 * page)
end
local later = redis.call('ZRANGEBYSCORE', queue, '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {claimed, later[2] or ''}
"""


# KEYS[1] the queue's running set. ARGV: [1] the in-progress key prefix, [2] the lease (ms), [3] its
# new expiry (the running entry's score), then pairs: job id, its claim's token ('' = any live lease).
# Each lease still ours gets the new expiry, and its running entry with it (XX: a job that left the
# set stays out); a lease gone (lapsed: the claims' crash recovery has it) or holding another
# claim's token is left alone. Returns the ids not renewed.
_RENEW = """
local running, prefix, px, expiry = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local lost = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local current = redis.call('GET', prefix .. id)
  if current and (token == '' or current == token) then
    redis.call('PEXPIRE', prefix .. id, px)
    redis.call('ZADD', running, 'XX', expiry, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim took: (job id, queue score) pairs, and when the next scheduled job is due."""

    jobs: list[tuple[str, int]]
    next_due_ms: int | None  # the smallest score after `now` (a deferred job), None when there is none


class JobClaimer:
    """A worker's claims on one queue (the script is loaded once, then called by its hash)."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._keys = [queue_name, keys.queue_running(queue_name)]
        self._script = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)

    async def claim(self, *, limit: int, lease_ms: int, now_ms: int, token: str = "1") -> Claim:
        """Lease up to `limit` due jobs that no worker runs, in queue order: one round trip.

        The lease is arq's `arq:in-progress:<id>` (the same key and meaning; its value is `token`,
        where arq writes "1"), so a job claimed here is run by arq's `run_job`, plain arq workers on
        the same queue see it as taken, and a claimed job whose worker dies runs again once the
        lease expires. `token` names this claim: the delivery's end shows it (`JobEnder.end`), so a
        delivery whose lease lapsed and whose job another claim took leaves that claim's lease and
        running entry alone. The job moves from the
        queue to its running set (`keys.queue_running`) with the lease's expiry: `JobEnder.end`
        takes it out, and puts it back on the queue at its score when the delivery ends unfinished
        (a retry, a shut-down). The lease's renewal (`renew`) moves the expiry with it.
        """
        args: list[str | int] = [now_ms, limit, lease_ms, keys.ARQ_IN_PROGRESS_PREFIX, _CLAIM_PAGE, token]
        pairs, later = await self._script(keys=self._keys, args=args)
        jobs = [(_text(pairs[i]), int(float(pairs[i + 1]))) for i in range(0, len(pairs), 2)]
        return Claim(jobs, int(float(later)) if later not in (b"", "", None) else None)

    async def renew(self, leases: Mapping[str, str], *, lease_ms: int, now_ms: int) -> list[str]:
        """Push back the lease of each running job in `leases` (job id -> its claim's token, ''
        for a job not claimed here) to `lease_ms` from now, and its running entry with it: one
        round trip. A lease is renewed only while it holds its claim's token ('' renews any live
        lease, as arq would): a delivery that outlived its lease, whose job another claim took,
        must not keep that claim's lease alive. Returns the ids whose lease is gone or another
        claim's."""
        if not leases:
            return []
        args: list[str | int] = [keys.ARQ_IN_PROGRESS_PREFIX, lease_ms, now_ms + lease_ms]
        for job_id, token in leases.items():
            args += [job_id, token]
        lost = await self._renew(keys=self._keys[1:], args=args)
        return [_text(job_id) for job_id in lost]


def _text(value: bytes | str) -> str:
    # Not storage.connections.as_text: that module imports this one (the serializer).
    return value.decode() if isinstance(value, bytes) else value


# KEYS: the job's lease, try counter, payload and result keys, arq's abort set, the queue, its
# running set. ARGV: the id, '1' to finish ('' to leave it queued), the result ('' none), its PX
# ('' none), the score to add ('' none: arq's Retry(defer=...)), the lease's new PX ('' to delete
# it), the job's queue score when it was claimed, the claim's token ('' none: not checked).
# arq's `Worker.finish_job` as one script: the same commands in the same order, atomic as its
# MULTI/EXEC was, but sent in the worker's coalesced pipeline instead of a transaction of its own.
# The delivery ends, so the job leaves the running set. A job not finished goes back on the queue
# where arq would have left it: its claimed score, plus arq's increment; if something queued it
# again meanwhile (a deferral at its turn), that entry is arq's to bump, as before. The lease and
# the running entry are this delivery's only while the lease holds its claim's token (or is gone):
# a delivery that outlived its lease, whose job another claim took, leaves them to that delivery.
_END = """
local lease, tries, payload, result = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local aborts, queue, running = KEYS[5], KEYS[6], KEYS[7]
local id, finish, data, data_px, incr, keep_px = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local claimed, token = ARGV[7], ARGV[8]
local current = redis.call('GET', lease)
local owner = token == '' or not current or current == token
if owner and keep_px ~= '' then redis.call('PEXPIRE', lease, keep_px) end
local held = owner and redis.call('ZREM', running, id) == 1
if finish == '1' then
  if data ~= '' and data_px ~= '' then
    redis.call('SET', result, data, 'PX', data_px)
  elseif data ~= '' then
    redis.call('SET', result, data)
  end
  redis.call('ZREM', aborts, id)
  redis.call('ZREM', queue, id)
elseif redis.call('ZSCORE', queue, id) then
  if incr ~= '' then redis.call('ZINCRBY', queue, incr, id) end
elseif held then
  redis.call('ZADD', queue, tonumber(claimed) + (tonumber(incr) or 0), id)
end
if owner and keep_px == '' then redis.call('DEL', lease) end
if finish == '1' then redis.call('DEL', tries, payload) end
return 0
"""


class JobEnder:
    """arq's end of a delivery (`Worker.finish_job`) through the worker's coalesced pipeline."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._queue_name = queue_name
        self._script = BatchedScript(redis, _END)

    async def end(  # noqa: PLR0917 - arq's finish_job's positional arguments, passed on as they come
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
        *,
        claimed_score: int | None = None,
        token: str | None = None,
    ) -> None:
        """What arq's `finish_job` does with the same arguments, and the job out of the running set.

        `claimed_score`: the job's queue score when `JobClaimer.claim` took it (now, when unknown):
        a job not finished goes back on the queue there, plus `incr_score`, as arq leaves it.
        `token`: the claim's (`JobClaimer.claim`); when the lease holds another claim's, that claim
        owns the job now and its lease and running entry are left alone. None: not checked.
        """
        expire = None if keep_result_forever else result_timeout_s
        if claimed_score is None:
            claimed_score = int(time.time() * 1000)
        job_keys = [
            keys.ARQ_IN_PROGRESS_PREFIX + job_id,
            keys.ARQ_RETRY_PREFIX + job_id,
            keys.ARQ_JOB_PREFIX + job_id,
            result_key_prefix + job_id,
            abort_jobs_ss,
            self._queue_name,
            keys.queue_running(self._queue_name),
        ]
        args: list[str | bytes | int] = [
            job_id,
            "1" if finish else "",
            result_data or b"",
            "" if expire is None else int(expire * 1000),
            incr_score or "",
            "" if keep_in_progress is None else int(keep_in_progress * 1000),
            claimed_score,
            token or "",
        ]
        await self._script(keys=job_keys, args=args)
