"""Strategy replay of a stored batch: its jobs streamed from SQL through `router_core.replay.Replay`.

The jobs are read a page at a time (`Jobs.iter`), so a batch of any size replays in bounded memory;
the learned quality board is read once from SQL (`quality_tallies`), as the workers' is.
"""

from __future__ import annotations

from router_core.catalog import Catalog
from router_core.models import ChatRequest
from router_core.planner import PlanLimits
from router_core.quality import QualityBoard
from router_core.replay import Replay, ReplayJob, ReplayReport, Variant
from storage.jobs import ANY_TENANT, JobStatus, TenantScope
from storage.sql.store import Store

__all__ = ["replay_batch"]


async def replay_batch(
    store: Store,
    batch_id: str,
    *,
    catalog: Catalog,
    variants: list[Variant],
    strength: float,
    tenant: TenantScope = ANY_TENANT,
    limits: PlanLimits | None = None,
) -> ReplayReport:
    """Re-plan every job of `batch_id` under each of `variants`, next to what the jobs did.

    `strength` is the board's prior strength (`ROUTEQ_QUALITY_PRIOR_STRENGTH`, as the workers plan).

    Raises:
        NotFoundError: no such batch (or another tenant's).
    """
    batch = await store.batches.get(batch_id, tenant=tenant)
    board = QualityBoard(await store.quality.tallies(), strength=strength)
    replay = Replay(catalog, board, variants, limits=limits)
    async for job in store.jobs.iter(batch.id, tenant=tenant):
        answered = job.status is JobStatus.SUCCEEDED
        replay.add(
            ReplayJob(
                request=ChatRequest.model_validate(job.request),
                deployment=job.deployment if answered else None,
                cost_usd=float(job.cost_usd or 0),
                latency_ms=job.latency_ms if answered else None,
            )
        )
    return replay.report()
