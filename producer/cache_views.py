"""The response cache as users see it: a tenant's policy and what the cache did, as JSON-ready dicts.

One shape for both surfaces: `GET /v1/cache/policy` and `/v1/cache/stats` answer these, and
`routeq cache policy` / `routeq cache stats` print them.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router_core.cache import CachePolicy
    from storage.sql.cache import CacheStats, TenantCachePolicy

__all__ = ["policy_view", "stats_view"]


def policy_view(tenant: str, row: TenantCachePolicy | None, fleet: CachePolicy) -> dict[str, Any]:
    """The tenant's own settings (null: the fleet's default), what they come to, and its last clear."""
    overrides = (
        row.overrides() if row is not None else dict.fromkeys(("enabled", "ttl_s", "semantic", "threshold"))
    )
    effective = fleet.overridden(**overrides)
    cleared = row.cleared_at if row is not None else None
    return {
        "object": "routeq.cache_policy",
        "tenant": tenant,
        **overrides,
        "effective": asdict(effective),
        "cleared_at": _iso(cleared),
    }


def stats_view(tenant: str | None, since: datetime | None, stats: CacheStats) -> dict[str, Any]:
    """What the cache did for `tenant` (None: every tenant) for jobs finished since `since`."""
    return {"object": "routeq.cache_stats", "tenant": tenant, "since": _iso(since), **stats.as_json()}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
