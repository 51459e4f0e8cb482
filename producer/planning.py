"""Route without running: a request's plan as the fleet would make it now, with no provider called.

`POST /v1/route`, `Client.plan` and `routeq plan` share this. The plan is `router_core.planner`'s
own, fed the fleet's live state (breakers, forced states, latency and success rates from Redis) and
its learned quality scores, so it shows the candidates a worker would try, in order, and every
exclusion with its reason. A round-robin preview does not advance the fleet's rotation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from router_core.catalog import Catalog
from router_core.errors import NoRouteError
from router_core.fleet import DeploymentSnapshot
from router_core.models import ChatRequest, Plan
from router_core.planner import PlanLimits, build_plan
from router_core.quality import QualitySource
from storage.fleet.quality import FleetQuality
from storage.fleet.state import RedisFleetState
from storage.settings import Settings
from storage.sql.store import Store

__all__ = ["PlanPreview", "Planner", "plan_view"]

PlanPreview = Plan | NoRouteError


class Planner:
    """Plans as a worker would now: the fleet's live state (None: unknown, priors and every breaker
    closed, as for a CLI with no fleet Redis) and its learned quality. Built once per process or
    command and kept."""

    def __init__(self, fleet: RedisFleetState | None, quality: QualitySource, limits: PlanLimits) -> None:
        self.fleet = fleet
        self.quality = quality
        self.limits = limits

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, redis: Redis | None) -> Planner:
        fleet = None if redis is None else RedisFleetState(redis, breaker=settings.breaker_policy())
        limits = PlanLimits(settings.default_completion_tokens, settings.max_candidates)
        return cls(fleet, FleetQuality.from_settings(redis, store, settings), limits)

    async def preview(self, request: ChatRequest, catalog: Catalog) -> PlanPreview:
        """The plan for `request` now, or the `NoRouteError` naming why every deployment is out."""
        snapshot: Mapping[str, DeploymentSnapshot] = {}
        if self.fleet is not None:
            snapshot = await self.fleet.snapshot(list(catalog))
        board = await self.quality.board()
        try:
            return build_plan(request, catalog, snapshot, limits=self.limits, quality=board)
        except NoRouteError as exc:
            return exc


def plan_view(result: PlanPreview) -> dict[str, Any]:
    """A plan as JSON: `routable`, the candidates best first (primary first) and every exclusion."""
    if isinstance(result, NoRouteError):
        return {
            "object": "routeq.plan",
            "routable": False,
            "message": str(result),
            "candidates": [],
            "excluded": [e.model_dump(mode="json") for e in result.exclusions],
        }
    body = result.model_dump(mode="json")
    if not body["candidates"]:  # a plan a run recorded when it found no route
        message = "no deployment could serve the request: every one was excluded"
        return {"object": "routeq.plan", "routable": False, "message": message, **body}
    return {"object": "routeq.plan", "routable": True, "primary": body["candidates"][0], **body}
