"""Routing strategies: each turns the eligible options into an ordered, scored list.

One function per strategy, found through `RANKERS` (no `if strategy == ...` chains). Scores are
"higher is better" and comparable within one plan only. For cost, speed, quality and balanced, a
deployment whose capabilities match the prompt's class gets its score multiplied by `boost`
(larger for more complex prompts); round_robin, least_loaded and fallback_chain keep their own order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router_core.catalog import Deployment
from router_core.fleet import DeploymentSnapshot
from router_core.models import Preferences, Strategy
from router_core.quality import QualityScore

__all__ = ["RANKERS", "Option", "RankContext", "rank"]

# Without a max_concurrency, load is measured against this many calls in flight.
_DEFAULT_CAPACITY = 100
_MIN_SUCCESS_RATE = 0.05


@dataclass(frozen=True, slots=True)
class Option:
    """An eligible deployment with the estimates the strategies compare."""

    deployment: Deployment
    position: int  # catalog order, the last tie-breaker
    est_cost: float
    est_latency_ms: float
    stats: DeploymentSnapshot
    capability_match: bool
    quality: QualityScore  # learned for the prompt's capability, or the catalog's prior

    @property
    def expected_latency_ms(self) -> float:
        """Latency inflated by the failure rate: a flaky fast deployment is not fast."""
        return self.est_latency_ms / max(self.stats.success_rate, _MIN_SUCCESS_RATE)

    @property
    def load(self) -> float:
        capacity = self.deployment.max_concurrency or _DEFAULT_CAPACITY
        return self.stats.in_flight / capacity


@dataclass(frozen=True, slots=True)
class RankContext:
    preferences: Preferences
    boost: float  # multiplier for a capability match, >= 1
    rotation: int  # round-robin counter value for this request


Ranker = Callable[[Sequence[Option], RankContext], list[float]]


def _boosted(options: Sequence[Option], ctx: RankContext, base: list[float]) -> list[float]:
    return [s * (ctx.boost if o.capability_match else 1.0) for o, s in zip(options, base, strict=True)]


def _relative_low(values: list[float]) -> list[float]:
    """1.0 for the lowest value, smaller for larger ones (cost, latency)."""
    low = min(values)
    return [1.0 if v <= 0 else (low / v if low > 0 else 0.0) for v in values]


def _by_cost(options: Sequence[Option], ctx: RankContext) -> list[float]:
    return _boosted(options, ctx, _relative_low([o.est_cost for o in options]))


def _by_speed(options: Sequence[Option], ctx: RankContext) -> list[float]:
    return _boosted(options, ctx, _relative_low([o.expected_latency_ms for o in options]))


def _by_quality(options: Sequence[Option], ctx: RankContext) -> list[float]:
    return _boosted(options, ctx, [o.quality.value for o in options])


def _balanced(options: Sequence[Option], ctx: RankContext) -> list[float]:
    w = ctx.preferences.weights
    total = w.cost + w.latency + w.quality
    cost = _relative_low([o.est_cost for o in options])
    latency = _relative_low([o.expected_latency_ms for o in options])
    best_quality = max(o.quality.value for o in options) or 1.0
    base = [
        (w.cost * c + w.latency * lat + w.quality * o.quality.value / best_quality) / total
        for o, c, lat in zip(options, cost, latency, strict=True)
    ]
    return _boosted(options, ctx, base)


def _round_robin(options: Sequence[Option], ctx: RankContext) -> list[float]:
    n = len(options)
    start = ctx.rotation % n
    return [1.0 - ((i - start) % n) / n for i in range(n)]


def _least_loaded(options: Sequence[Option], ctx: RankContext) -> list[float]:
    # Equal load is broken by expected latency, at a weight too small to override a load difference.
    fastest = _relative_low([o.expected_latency_ms for o in options])
    return [1.0 - o.load + 1e-6 * f for o, f in zip(options, fastest, strict=True)]


def _fallback_chain(options: Sequence[Option], ctx: RankContext) -> list[float]:
    chain = ctx.preferences.chain or []
    n = len(chain)
    return [1.0 - chain.index(o.deployment.id) / n for o in options]


RANKERS: dict[Strategy, Ranker] = {
    Strategy.COST: _by_cost,
    Strategy.SPEED: _by_speed,
    Strategy.QUALITY: _by_quality,
    Strategy.BALANCED: _balanced,
    Strategy.ROUND_ROBIN: _round_robin,
    Strategy.LEAST_LOADED: _least_loaded,
    Strategy.FALLBACK_CHAIN: _fallback_chain,
}


def rank(options: Sequence[Option], ctx: RankContext) -> list[tuple[Option, float]]:
    """Options ordered best first, each with its score; ties go to higher (learned) quality, then catalog
    order."""
    if not options:
        return []
    scores = RANKERS[ctx.preferences.strategy](options, ctx)
    paired = list(zip(options, scores, strict=True))
    paired.sort(key=lambda p: (-p[1], -p[0].quality.value, p[0].position))
    return paired
