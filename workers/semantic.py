"""The semantic cache on a worker: answers to prompts that mean the same, found by their embeddings.

A request that asks for it (`preferences.cache.semantic`, the tenant's policy or
`ROUTEQ_SEMANTIC_CACHE`) and finds no exact answer is embedded by the catalog's embedding deployment
(`Router.embed`: the official SDK's `embeddings.create`) and looked up in the vector index
(`storage/sql/vectors.py`: sqlite-vec on SQLite, pgvector or an in-process index on PostgreSQL)
among the tenant's answers to requests alike in everything but their text (`semantic_group`). A
neighbour at or above the threshold whose answer meets the request's constraints is a hit, with
its similarity. A job that called instead has its embedding indexed once its answer is committed.

The embedding call is a provider call like any other: it takes a budget hold first and is recorded
as the job's first attempt (the router's own attempts are numbered after it, `ShiftedGuard`), so
the ledger, the budgets and a dead run's recovery count it exactly once. A semantic hit costs that
embedding and nothing else. An embedding that fails or is refused budget makes the job a plain miss.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import datetime

from router_core.cache import semantic_group, semantic_text
from router_core.errors import ConfigError, RouteqError
from router_core.models import Attempt, AttemptOutcome, ChatRequest, Usage
from router_core.router import Router
from router_core.spend import SpendGuard, SpendRefusal
from router_core.tokens import estimate_tokens
from storage.fleet.budgets import ScriptHold
from storage.jobs import StartedJob
from storage.sql.store import Store
from storage.sql.vectors import Neighbour, VectorEntry, VectorIndex, open_vector_index

__all__ = ["EMBEDDING_ATTEMPT", "Probe", "SemanticCache", "ShiftedGuard"]

logger = logging.getLogger("routeq.worker")

# The embedding call is the job's first attempt; the router's calls are numbered after it.
EMBEDDING_ATTEMPT = 1
_NEIGHBOURS = 4


@dataclass(frozen=True, slots=True)
class Probe:
    """A request's embedding: searched before its call, indexed after its answer."""

    group: str
    embedder: str
    vector: list[float]
    attempt: Attempt  # the embedding call, billed


class ShiftedGuard:
    """A run's `SpendGuard` for the router when an embedding call came first: attempt n is n + 1."""

    def __init__(self, guard: SpendGuard, shift: int) -> None:
        self._guard = guard
        self._shift = shift

    async def reserve(self, attempt_no: int, deployment_id: str, amount_usd: float) -> SpendRefusal | None:
        return await self._guard.reserve(attempt_no + self._shift, deployment_id, amount_usd)

    async def release(self, attempt_no: int) -> None:
        await self._guard.release(attempt_no + self._shift)

    def script_hold(self, attempt_no: int, deployment_id: str, amount_usd: float) -> ScriptHold | None:
        """The wrapped guard's hold as script keys (`RedisFleetState.admit`), None if it has none."""
        script_hold = getattr(self._guard, "script_hold", None)
        if script_hold is None:
            return None
        hold: ScriptHold = script_hold(attempt_no + self._shift, deployment_id, amount_usd)
        return hold

    def script_release(self, attempt_no: int) -> tuple[list[str], list[str]] | None:
        """The wrapped guard's release as script keys (`RedisFleetState.release`), None if it has none."""
        script_release = getattr(self._guard, "script_release", None)
        if script_release is None:
            return None
        parts: tuple[list[str], list[str]] = script_release(attempt_no + self._shift)
        return parts


class SemanticCache:
    """Embeds requests, searches the vector index, indexes new answers (see the module docstring).

    Args:
        embedder: the catalog's embedding deployment to use; None: its first one.
    """

    def __init__(self, store: Store, router: Router, *, embedder: str | None = None) -> None:
        self.store = store
        self.router = router
        self.embedder = embedder
        self._index: VectorIndex | None = None
        self._opening = asyncio.Lock()
        self._warned = False

    async def probe(self, request: ChatRequest, guard: SpendGuard) -> Probe | None:
        """Embed the request (held and billed as attempt 1); None if it cannot be embedded now."""
        try:
            dep = self.router.catalog.embedder(self.embedder)
        except ConfigError as exc:
            if not self._warned:
                logger.warning("semantic cache asked for, but: %s", exc)
                self._warned = True
            return None
        text = semantic_text(request)
        # Held as the router holds a prompt: its estimate times the router's margin.
        tokens = math.ceil(estimate_tokens(text) * self.router.prompt_margin) + 8
        hold = self.router.catalog.price(dep.id).estimate(tokens, 0)
        if await guard.reserve(EMBEDDING_ATTEMPT, dep.id, hold) is not None:
            return None  # no budget left even for the embedding: the call's own hold will say why
        try:
            embedded = await self.router.embed([text], deployment=dep.id)
        except RouteqError as exc:
            await guard.release(EMBEDDING_ATTEMPT)
            logger.warning("semantic cache: could not embed the request (%s); an exact lookup only", exc)
            return None
        attempt = Attempt(
            deployment=dep.id,
            provider=dep.provider,
            model=dep.model,
            outcome=AttemptOutcome.SUCCESS,
            latency_ms=embedded.latency_ms,
            usage=Usage(input_tokens=embedded.input_tokens),
            cost_usd=embedded.cost_usd,
            simulated=embedded.simulated,
        )
        return Probe(semantic_group(request), dep.id, embedded.vectors[0], attempt)

    async def nearest(
        self, job: StartedJob, probe: Probe, *, since: datetime, threshold: float
    ) -> list[Neighbour]:
        """The tenant's indexed answers at least `threshold` similar to the probe, best first."""
        index = await self._open()
        found = await index.nearest(
            job.tenant, probe.group, probe.embedder, probe.vector, k=_NEIGHBOURS, since=since
        )
        return [n for n in found if n.similarity >= threshold]

    async def remember(self, job: StartedJob, probe: Probe) -> None:
        """Index the embedding of a job whose answer was just committed."""
        index = await self._open()
        await index.add(VectorEntry(job.id, job.tenant, probe.group, probe.embedder, probe.vector))

    async def close(self) -> None:
        if self._index is not None:
            await self._index.close()

    async def _open(self) -> VectorIndex:
        async with self._opening:
            if self._index is None:
                self._index = await open_vector_index(self.store)
                logger.info("semantic cache: vector index %s", self._index.name)
            return self._index
