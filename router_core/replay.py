"""Strategy replay: what a past batch would have cost, how fast and how good under other strategies.

Pure re-planning, no provider call: each job's stored request is planned again (`build_plan`) under
each strategy asked for, with the current catalog and the learned quality board and neutral fleet
stats (no breaker open, catalog latencies), and the primary candidate is what that strategy would
have sent. Per strategy the replay adds up:

- expected cost: the sum of the primaries' estimates (prompt estimate + `max_tokens`, or the
  default completion size, at catalog prices; failovers not counted);
- expected latency: the mean of the primaries' catalog latencies;
- quality: the mean learned quality of the primaries for each prompt's capability
  (`QualityBoard.score`: the same measure for every strategy, escalate included);
- the deployment mix: how many primaries each deployment would have been.

Next to them, two rows for what happened: "submitted" re-plans each job with its own preferences
(the estimate's bias, with no strategy changed: compare the other rows with this one), and "actual"
is what the jobs did: the sum of their billed cost, the mean latency of the succeeded ones and the
learned quality of the deployments that answered.

`Replay` takes jobs one at a time and keeps sums only, so a batch of any size streams through it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from router_core.catalog import Catalog
from router_core.classify import classify
from router_core.errors import InvalidRequestError, NoRouteError
from router_core.models import STRATEGY_ALIASES, ChatRequest, Escalation, Strategy
from router_core.planner import PlanLimits, build_plan
from router_core.quality import QualityBoard

__all__ = [
    "Replay",
    "ReplayJob",
    "ReplayReport",
    "ReplayRow",
    "Variant",
    "parse_variants",
]

SUBMITTED = "submitted"
ACTUAL = "actual"
_MIX_TOP = 3


@dataclass(frozen=True, slots=True)
class Variant:
    """One strategy to replay with, and the preferences it sets (an escalate mode)."""

    name: str
    strategy: Strategy
    escalation: Escalation | None = None

    def preferences(self) -> dict[str, Any]:
        """What replaces the request's strategy fields (other strategies' settings are dropped)."""
        return {"strategy": self.strategy, "escalation": self.escalation, "ensemble": None}


def parse_variants(text: str) -> list[Variant]:
    """`cost,quality,escalate:fast,...`: strategy names (aliases too), escalate with an optional mode.

    Raises:
        InvalidRequestError: an unknown name or mode, or nothing to replay; `field` "strategies".
    """
    variants: dict[str, Variant] = {}
    for raw in (part.strip().lower() for part in text.split(",")):
        if raw and raw not in variants:
            variants[raw] = _variant(raw)
    if not variants:
        raise InvalidRequestError(f"no strategy to replay; give some of: {_KNOWN}", field="strategies")
    return list(variants.values())


_KNOWN = ", ".join([*Strategy, *STRATEGY_ALIASES, "escalate:<fast|balanced|accurate>"])
_MODES = ("fast", "balanced", "accurate")


def _variant(raw: str) -> Variant:
    name, _, mode = raw.partition(":")
    try:
        strategy = Strategy(STRATEGY_ALIASES.get(name, name))
    except ValueError:
        raise InvalidRequestError(f"unknown strategy {raw!r} (known: {_KNOWN})", field="strategies") from None
    if strategy is Strategy.FALLBACK_CHAIN:
        raise InvalidRequestError(
            "fallback_chain cannot be replayed: it needs each request's own chain", field="strategies"
        )
    if not mode:
        return Variant(raw, strategy)
    if strategy is not Strategy.ESCALATE or mode not in _MODES:
        raise InvalidRequestError(
            f"{raw!r}: only escalate takes a mode (escalate:fast, :balanced or :accurate)", field="strategies"
        )
    return Variant(raw, strategy, Escalation.model_validate({"mode": mode}))


@dataclass(frozen=True, slots=True)
class ReplayJob:
    """One job of the batch: its request and what happened to it."""

    request: ChatRequest
    deployment: str | None  # who answered (None: it did not succeed)
    cost_usd: float  # billed, failed attempts included
    latency_ms: float | None


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """One strategy's figures over the batch (or what actually happened)."""

    name: str
    jobs: int  # planned (or, for "actual", answered)
    unroutable: int  # jobs no deployment could take under this strategy (or, for "actual", unanswered)
    cost_usd: float
    mean_latency_ms: float | None
    mean_quality: float | None
    mix: list[tuple[str, float]]  # the top deployments with their share of the jobs

    def as_json(self) -> dict[str, Any]:
        return {
            "strategy": self.name,
            "jobs": self.jobs,
            "unroutable": self.unroutable,
            "cost_usd": round(self.cost_usd, 8),
            "mean_latency_ms": None if self.mean_latency_ms is None else round(self.mean_latency_ms, 1),
            "mean_quality": None if self.mean_quality is None else round(self.mean_quality, 4),
            "mix": [{"deployment": d, "share": round(s, 4)} for d, s in self.mix],
        }


@dataclass(frozen=True, slots=True)
class ReplayReport:
    jobs: int
    rows: list[ReplayRow]  # each variant, then "submitted", then "actual"

    def row(self, name: str) -> ReplayRow:
        return next(r for r in self.rows if r.name == name)

    def as_json(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "strategies": [r.as_json() for r in self.rows]}


@dataclass(slots=True)
class _Sums:
    name: str
    jobs: int = 0
    unroutable: int = 0
    cost: float = 0.0
    latency: float = 0.0
    latency_n: int = 0
    quality: float = 0.0
    quality_n: int = 0
    mix: Counter[str] = field(default_factory=Counter)

    def row(self) -> ReplayRow:
        top = [(d, n / self.jobs) for d, n in self.mix.most_common(_MIX_TOP)] if self.jobs else []
        return ReplayRow(
            name=self.name,
            jobs=self.jobs,
            unroutable=self.unroutable,
            cost_usd=self.cost,
            mean_latency_ms=self.latency / self.latency_n if self.latency_n else None,
            mean_quality=self.quality / self.quality_n if self.quality_n else None,
            mix=top,
        )


class Replay:
    """Re-plans jobs under each variant as they are added; `report()` gives the figures so far."""

    def __init__(
        self,
        catalog: Catalog,
        board: QualityBoard,
        variants: list[Variant],
        *,
        limits: PlanLimits | None = None,
    ) -> None:
        self.catalog, self.board, self.limits = catalog, board, limits or PlanLimits()
        self.variants = variants
        self._sums = {v.name: _Sums(v.name) for v in variants}
        self._submitted = _Sums(SUBMITTED)
        self._actual = _Sums(ACTUAL)
        self._jobs = 0

    def add(self, job: ReplayJob) -> None:
        self._jobs += 1
        request = job.request
        capability = request.preferences.capability or classify(request.prompt_text()).capability
        for variant in self.variants:
            prefs = request.preferences.model_copy(update=variant.preferences())
            self._plan(self._sums[variant.name], request.model_copy(update={"preferences": prefs}))
        self._plan(self._submitted, request)
        actual = self._actual
        actual.cost += job.cost_usd
        if job.deployment is None:
            actual.unroutable += 1
            return
        actual.jobs += 1
        actual.mix[job.deployment] += 1
        if job.latency_ms is not None:
            actual.latency += job.latency_ms
            actual.latency_n += 1
        if job.deployment in self.catalog:
            actual.quality += self.board.score(self.catalog[job.deployment], capability).value
            actual.quality_n += 1

    def _plan(self, sums: _Sums, request: ChatRequest) -> None:
        try:
            plan = build_plan(request, self.catalog, {}, limits=self.limits, quality=self.board)
        except (NoRouteError, InvalidRequestError):
            # The current catalog cannot take it under this strategy (a constraint, a model gone).
            sums.unroutable += 1
            return
        primary = plan.primary
        sums.jobs += 1
        sums.cost += primary.estimated_cost_usd
        sums.latency += primary.estimated_latency_ms
        sums.latency_n += 1
        sums.quality += self.board.score(self.catalog[primary.deployment], plan.capability).value
        sums.quality_n += 1
        sums.mix[primary.deployment] += 1

    def report(self) -> ReplayReport:
        rows = [self._sums[v.name].row() for v in self.variants]
        return ReplayReport(self._jobs, [*rows, self._submitted.row(), self._actual.row()])
