"""Routing strategies: each turns the eligible options into an ordered, scored list.

One function per strategy, found through `RANKERS` (no `if strategy == ...` chains). Scores are
"higher is better" and comparable within one plan only. For cost, speed, quality and balanced, a
deployment whose capabilities match the prompt's class gets its score multiplied by `boost`
(larger for more complex prompts); round_robin, least_loaded and fallback_chain keep their own order.

Two strategies are built on the others:

- `ensemble`: a weighted Borda count. Each member strategy (`Preferences.votes()`) ranks the
  options; an option at position i of n (0 = first) gets (n - 1 - i) / (n - 1) points from it (1 for
  the first, 0 for the last; options the member scores alike share the mean of their points, so no
  member breaks its own ties). An option's score is the weighted mean of its points,
  sum(w_s * points_s) / sum(w_s), in [0, 1]. Positions, not raw scores, because the members'
  scores are on different scales (a cost ratio, a quality): a vote counts the same whatever its
  strategy's scale. Ties are then broken as `rank` breaks any tie.
- `escalate`: difficulty-aware. An option's `quality` is, for this strategy only, its learned
  quality on prompts of the request's complexity (`QualityBoard.by_complexity`). The bar is the best
  option's quality minus the tolerance (`Escalation.effective_tolerance`); options at or above it
  come first, cheapest first, then the rest, best quality first: the cheapest good-enough
  deployment answers, failover stays among good-enough ones, and only then falls to the least
  weak of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router_core.catalog import Deployment
from router_core.fleet import DeploymentSnapshot
from router_core.models import Escalation, Preferences, Strategy
from router_core.quality import QualityScore

__all__ = ["RANKERS", "Option", "RankContext", "escalation_bar", "rank"]

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
    # Alone, the planner has excluded deployments outside the chain; in an ensemble they rank last.
    chain = ctx.preferences.chain or []
    n = len(chain)
    return [1.0 - chain.index(o.deployment.id) / n if o.deployment.id in chain else 0.0 for o in options]


def _borda_points(options: Sequence[Option], scores: list[float]) -> list[float]:
    """Normalised Borda points of one member's ranking: 1 for its first option, 0 for its last;
    options with equal scores share the mean points of the positions they hold together."""
    n = len(options)
    if n == 1:
        return [1.0]
    order = sorted(range(n), key=lambda i: -scores[i])
    points = [0.0] * n
    start = 0
    while start < n:
        end = start
        while end + 1 < n and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        shared = sum((n - 1 - pos) / (n - 1) for pos in range(start, end + 1)) / (end - start + 1)
        for pos in range(start, end + 1):
            points[order[pos]] = shared
        start = end + 1
    return points


def _ensemble(options: Sequence[Option], ctx: RankContext) -> list[float]:
    votes = {s: w for s, w in ctx.preferences.votes().items() if w > 0}
    total = sum(votes.values())
    combined = [0.0] * len(options)
    for strategy, weight in votes.items():
        points = _borda_points(options, RANKERS[strategy](options, ctx))
        combined = [c + weight * p for c, p in zip(combined, points, strict=True)]
    return [c / total for c in combined]


def escalation_bar(options: Sequence[Option], tolerance: float) -> tuple[float, float]:
    """(best, threshold) of an escalate ranking: the best option's quality and best - tolerance."""
    best = max(o.quality.value for o in options)
    return best, best - tolerance


# Learned scores are sums of floats: a deployment exactly at the bar must not miss it by rounding.
_BAR_SLACK = 1e-9


def _escalate(options: Sequence[Option], ctx: RankContext) -> list[float]:
    tolerance = (ctx.preferences.escalation or Escalation()).effective_tolerance
    _, threshold = escalation_bar(options, tolerance)
    cheap = _relative_low([o.est_cost for o in options])  # in [0, 1]: 1 for the cheapest
    # Good enough: 2 + cheapness, in [2, 3]; below the bar: its quality, in [0, 1].
    return [
        2.0 + c if o.quality.value >= threshold - _BAR_SLACK else o.quality.value
        for o, c in zip(options, cheap, strict=True)
    ]


RANKERS: dict[Strategy, Ranker] = {
    Strategy.COST: _by_cost,
    Strategy.SPEED: _by_speed,
    Strategy.QUALITY: _by_quality,
    Strategy.BALANCED: _balanced,
    Strategy.ROUND_ROBIN: _round_robin,
    Strategy.LEAST_LOADED: _least_loaded,
    Strategy.FALLBACK_CHAIN: _fallback_chain,
    Strategy.ENSEMBLE: _ensemble,
    Strategy.ESCALATE: _escalate,
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
