"""The response cache on a worker: serve a job from an earlier answer, or make the one call for it.

    begin   decide (the fleet's settings, the tenant's policy, the request's `preferences.cache`);
            `use`: look the key up in SQL (store.cache), then the semantic index if the job asks;
            a miss joins the request's flight (storage/fleet/flights.py): the leader calls, the
            others wait for its commit and take its answer (or lead when it failed)
    end     after the job's commit: the leader leaves its flight, waking the waiters; a new answer
            of a semantic request gets its embedding indexed (workers/semantic.py)

A hit is a succeeded job with no attempts: no provider call, no budget hold, $0 in the ledger;
`result.cache` names the source job and what was saved. An answer serves a request only if it meets
the request's own constraints (`planner.answer_fits`: providers, least quality, pinned model):
answers of a deployment that no longer exists in the catalog, or is disabled in it, are not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis

from router_core.cache import CacheDecision, CacheMode, CachePolicy, cache_key, decide
from router_core.catalog import Catalog
from router_core.models import CacheHit, ChatRequest, CompletionResult
from router_core.planner import answer_fits
from router_core.spend import SpendGuard
from storage import keys
from storage.bus.coalesce import Later
from storage.bus.notifier import Notifier
from storage.fleet.flights import Flights
from storage.jobs import StartedJob
from storage.sql.cache import CachedAnswer, CacheRecord
from storage.sql.store import Store
from workers.semantic import Probe, SemanticCache

__all__ = ["CacheUse", "JobCache", "hit_pieces"]

logger = logging.getLogger("routeq.worker")


@dataclass(slots=True)
class CacheUse:
    """One job's use of the cache, from before routing until after its commit."""

    decision: CacheDecision
    key: str
    flight: str = ""  # the key and the request's constraints (set on a miss): who may share one call
    hit: CompletionResult | None = None  # served from the cache: route nothing
    source: CachedAnswer | None = None
    similarity: float | None = None
    leading: bool = False  # this job leads its flight: it must leave it after its commit
    probe: Probe | None = None  # the request's embedding (semantic): its call is attempt 1
    started: float = field(default_factory=time.perf_counter)

    def record(self) -> CacheRecord:
        """What the job's row records about the cache."""
        if self.source is None:
            return CacheRecord(self.key)
        return CacheRecord(self.key, self.source.source_job, self.similarity, self.source.saved_usd)


class JobCache:
    """The worker's side of the response cache (see the module docstring).

    Args:
        policy: the fleet's defaults (settings); a tenant's row in `cache_policies` overrides them,
            read again after `policy_ttl_s`.
        wait_s: how long a job waits for its flight's leader before calling by itself.
        lease_s: how long a leader holds its flight if it never leaves (it died): routing's limit.
    """

    def __init__(
        self,
        store: Store,
        redis: Redis,
        catalog: Catalog,
        policy: CachePolicy,
        *,
        wait_s: float,
        lease_s: float,
        policy_ttl_s: float = 5.0,
        semantic: SemanticCache | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.semantic = semantic
        self.policy = policy
        self.wait_s = wait_s
        self.policy_ttl_s = policy_ttl_s
        self.flights = Flights(redis, lease_s=lease_s)
        self._notifier = Notifier(redis, patterns=(keys.flight_done_channel("*", "*"),))
        self._policies: dict[str, tuple[float, asyncio.Future[CachePolicy]]] = {}

    async def close(self) -> None:
        await self._notifier.close()
        if self.semantic is not None:
            await self.semantic.close()

    async def begin(self, job: StartedJob, request: ChatRequest, guard: SpendGuard) -> CacheUse | None:
        """How `job` uses the cache: None (off), a hit to serve, or a call to make (and cache).

        `guard` holds budget for the request's embedding when it asks for the semantic cache.
        """
        decision = decide(request, await self.tenant_policy(job.tenant))
        if decision.mode is CacheMode.OFF:
            return None
        use = CacheUse(decision, cache_key(request))
        if not decision.reads:
            return use  # refresh: call whatever is cached; the new answer is cached from now on
        if await self._find(job, request, use):
            return use
        if use.decision.semantic and await self._find_similar(job, request, use, guard):
            return use
        await self._join_flight(job, request, use)
        return use

    def end(self, job: StartedJob, use: CacheUse | None, *, answered: bool = False) -> Awaitable[None]:
        """After the job's commit (or its deferral): a leader lets its flight go, waking the waiters;
        a new answer (`answered`) of a semantic request has its embedding indexed. The flight's
        script call is queued when this is called (storage/bus/coalesce.py)."""
        left = None
        if use is not None and use.leading:
            use.leading = False
            left = self.flights.leave(job.tenant, use.flight, job.id)
        return Later(lambda: self._ended(job, use, left, answered=answered))

    async def _ended(
        self, job: StartedJob, use: CacheUse | None, left: Awaitable[int] | None, *, answered: bool
    ) -> None:
        if left is not None:
            await left
        if not answered or use is None or use.hit is not None or use.probe is None:
            return  # no new answer of a semantic request: nothing to index
        if self.semantic is not None:
            await self.semantic.remember(job, use.probe)

    async def tenant_policy(self, tenant: str) -> CachePolicy:
        """The fleet's defaults with the tenant's overrides (read at most every `policy_ttl_s`; the
        jobs that need it while it is read wait for that one read)."""
        cached = self._policies.get(tenant)
        if cached is not None and cached[0] > time.monotonic():
            return await asyncio.shield(cached[1])  # one waiter cancelled does not cancel the read
        if len(self._policies) > 10_000:
            self._policies.clear()
        reading = asyncio.ensure_future(self._read_policy(tenant))
        self._policies[tenant] = (time.monotonic() + self.policy_ttl_s, reading)
        try:
            return await asyncio.shield(reading)
        except Exception:
            self._policies.pop(tenant, None)  # a failed read is not kept: the next job reads again
            raise

    async def _read_policy(self, tenant: str) -> CachePolicy:
        row = await self.store.cache.policy(tenant)
        return self.policy if row is None else self.policy.overridden(**row.overrides())

    async def _join_flight(self, job: StartedJob, request: ChatRequest, use: CacheUse) -> None:
        """Lead the request's flight, or wait for its leader's answer (at most `wait_s`)."""
        constraints = request.preferences.model_dump_json(exclude={"cache", "strategy_source"})
        use.flight = hashlib.sha256(f"{use.key}:{constraints}".encode()).hexdigest()
        channel = keys.flight_done_channel(job.tenant, use.flight)
        deadline = time.monotonic() + self.wait_s
        while True:
            async with self._notifier.watch(channel) as signal:
                entry = await self.flights.enter(job.tenant, use.flight, job.id)
                if entry.leader:
                    use.leading = True
                    # A leader left since our read: its answer may have been committed after it.
                    if entry.recheck and await self._find(job, request, use):
                        await self.end(job, use)
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.info("job %s waited %.0fs for an identical call: calls", job.id, self.wait_s)
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(entry.lease_left_s, left)):
                        await signal.wait()
            if await self._find(job, request, use):
                return

    async def _find(self, job: StartedJob, request: ChatRequest, use: CacheUse) -> bool:
        """Serve `use` from the newest cached answer that fits the request, if there is one."""
        since = self.store.db.now() - timedelta(seconds=use.decision.ttl_s)
        for answer in await self.store.cache.lookup(job.tenant, use.key, since=since):
            if self._fits(request, answer):
                self._serve(use, answer, similarity=None)
                return True
        return False

    async def _find_similar(
        self, job: StartedJob, request: ChatRequest, use: CacheUse, guard: SpendGuard
    ) -> bool:
        """Serve `use` from an answer to a request that means the same, if one is close enough."""
        if self.semantic is None:
            return False
        use.probe = await self.semantic.probe(request, guard)
        if use.probe is None:
            return False
        since = self.store.db.now() - timedelta(seconds=use.decision.ttl_s)
        near = await self.semantic.nearest(job, use.probe, since=since, threshold=use.decision.threshold)
        answers = await self.store.cache.answers(job.tenant, [n.job_id for n in near], since=since)
        for neighbour in near:
            answer = answers.get(neighbour.job_id)
            if answer is not None and self._fits(request, answer):
                self._serve(use, answer, similarity=neighbour.similarity)
                return True
        return False

    def _fits(self, request: ChatRequest, answer: CachedAnswer) -> bool:
        deployment = self.catalog.get(answer.deployment)
        return deployment is not None and deployment.enabled and answer_fits(request, deployment) is None

    def _serve(self, use: CacheUse, answer: CachedAnswer, *, similarity: float | None) -> None:
        hit = CacheHit(source_job=answer.source_job, similarity=similarity, saved_usd=float(answer.saved_usd))
        served: dict[str, Any] = answer.result | {
            "attempts": [],
            "cost_usd": 0.0,
            "latency_ms": (time.perf_counter() - use.started) * 1000,
            "cache": hit.model_dump(),
        }
        use.hit = CompletionResult.model_validate(served)
        use.source = answer
        use.similarity = similarity


def hit_pieces(result: CompletionResult) -> list[str | dict[str, Any]]:
    """A cached answer as relay pieces for a streamed job: the first choice's text, then every
    other part (tool calls, other choices) as chunk choices, since no stream is replayed."""
    pieces: list[str | dict[str, Any]] = []
    for choice in result.choices:
        message = choice.message
        delta = {name: value for name, value in message.items() if value is not None and name != "content"}
        if choice.index == 0 and choice.text:
            pieces.append(choice.text)
        elif choice.text:
            delta["content"] = choice.text
        if "tool_calls" in delta:
            delta["tool_calls"] = [call | {"index": n} for n, call in enumerate(delta["tool_calls"])]
        if delta.keys() - {"role"}:
            pieces.append({"index": choice.index, "delta": delta, "finish_reason": None})
    return pieces
