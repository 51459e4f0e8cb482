"""Learned quality: a deployment's catalog quality, updated by what judges and users say of its answers.

The catalog's `quality` is a prior: someone's guess, typed in once. Evidence is a score in [0, 1]
given to one answer: a judge deployment grading a sampled job, a reference set's expected answer,
a user's rating. Evidence is counted per deployment x capability x complexity (`Tally`); the
`QualityBoard` turns those counts into the score the planner ranks by.

The update is a Beta-style shrinkage with `strength` pseudo-samples (`ROUTEQ_QUALITY_PRIOR_STRENGTH`,
default 10): with prior p, n samples summing to s,

    learned = (strength * p + s) / (strength + n)

so a handful of samples moves the score a little and hundreds move it almost all the way to their
mean. Two levels, so a capability with little evidence borrows from the deployment's other answers
instead of jumping back to the catalog number:

    deployment level   prior = the catalog quality,           evidence = every answer of the deployment
    capability level   prior = the deployment-level score,    evidence = its answers of that capability
                       (the deployment level then counts the *other* capabilities only, so no
                       answer is counted twice)

Complexity (the classifier's low / medium / high) is kept in the tally for difficulty-aware
escalation (`QualityBoard.by_complexity`); the planner's `quality` is per capability.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from router_core.catalog import Deployment
from router_core.classify import classify
from router_core.models import Capability, ChatRequest, Complexity

__all__ = [
    "DEFAULT_STRENGTH",
    "Evidence",
    "QualityBoard",
    "QualityScore",
    "QualitySource",
    "StaticQuality",
    "Tally",
    "evidence_for",
    "shrink",
    "tallies_from",
]

DEFAULT_STRENGTH = 10.0

Source = Literal["prior", "learned"]
_K = TypeVar("_K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One score given to one answer, and what to count it under."""

    deployment: str
    capability: Capability
    complexity: Complexity
    score: float  # in [0, 1]

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"evidence score must be within [0, 1], got {self.score!r}")


@dataclass(frozen=True, slots=True)
class Tally:
    """Evidence summed for one deployment x capability x complexity."""

    deployment: str
    capability: Capability
    complexity: Complexity
    samples: int
    total: float  # the sum of the samples' scores

    @property
    def mean(self) -> float:
        return self.total / self.samples if self.samples else 0.0


@dataclass(frozen=True, slots=True)
class QualityScore:
    """The quality the planner uses for one deployment (and capability), and what it rests on."""

    deployment: str
    prior: float  # the catalog's quality
    value: float  # what the planner ranks by
    samples: int  # evidence behind `value`: the deployment's answers, all capabilities

    @property
    def source(self) -> Source:
        return "learned" if self.samples else "prior"


def shrink(prior: float, samples: int, total: float, strength: float) -> float:
    """The prior moved towards the samples' mean by their weight against `strength` pseudo-samples."""
    if samples <= 0:
        return prior
    return (strength * prior + total) / (strength + samples)


class QualityBoard:
    """Learned scores for every deployment with evidence; the prior for the rest.

    Built from tallies (SQL keeps them, `storage` caches them fleet-wide); immutable, cheap to ask.
    """

    def __init__(self, tallies: Iterable[Tally] = (), *, strength: float = DEFAULT_STRENGTH) -> None:
        if strength <= 0:
            raise ValueError(f"strength must be > 0, got {strength!r}")
        self.strength = strength
        self.tallies = tuple(tallies)
        # (deployment, capability) -> (samples, total); deployment -> (samples, total)
        self._by_capability: dict[tuple[str, Capability], tuple[int, float]] = {}
        self._by_deployment: dict[str, tuple[int, float]] = {}
        self._by_complexity: dict[tuple[str, Complexity], tuple[int, float]] = {}
        for t in self.tallies:
            _add(self._by_capability, (t.deployment, t.capability), t)
            _add(self._by_deployment, t.deployment, t)
            _add(self._by_complexity, (t.deployment, t.complexity), t)

    def __bool__(self) -> bool:
        return bool(self.tallies)

    def score(self, dep: Deployment, capability: Capability | None = None) -> QualityScore:
        """`dep`'s quality for prompts of `capability` (or over all of its answers when None)."""
        n_all, s_all = self._by_deployment.get(dep.id, (0, 0.0))
        if capability is None:
            value = shrink(dep.quality, n_all, s_all, self.strength)
            return QualityScore(dep.id, dep.quality, value, n_all)
        n_cap, s_cap = self._by_capability.get((dep.id, capability), (0, 0.0))
        level = shrink(dep.quality, n_all - n_cap, s_all - s_cap, self.strength)
        value = shrink(level, n_cap, s_cap, self.strength)
        return QualityScore(dep.id, dep.quality, value, n_all)

    def by_complexity(self, dep: Deployment, complexity: Complexity) -> QualityScore:
        """`dep`'s quality on prompts of `complexity`, shrunk to its overall score."""
        n_all, s_all = self._by_deployment.get(dep.id, (0, 0.0))
        n_cx, s_cx = self._by_complexity.get((dep.id, complexity), (0, 0.0))
        level = shrink(dep.quality, n_all - n_cx, s_all - s_cx, self.strength)
        return QualityScore(dep.id, dep.quality, shrink(level, n_cx, s_cx, self.strength), n_cx)

    def samples(self, deployment_id: str, capability: Capability | None = None) -> int:
        """Scored answers of the deployment (of prompts of `capability`, when given)."""
        if capability is None:
            return self._by_deployment.get(deployment_id, (0, 0.0))[0]
        return self._by_capability.get((deployment_id, capability), (0, 0.0))[0]

    def capabilities(self, deployment_id: str) -> list[Capability]:
        """The capabilities the deployment has evidence for, in `Capability` order."""
        return [c for c in Capability if (deployment_id, c) in self._by_capability]


def _add(into: dict[_K, tuple[int, float]], key: _K, t: Tally) -> None:
    n, s = into.get(key, (0, 0.0))
    into[key] = (n + t.samples, s + t.total)


class QualitySource(Protocol):
    """Where the router reads the current board (storage caches it fleet-wide)."""

    async def board(self) -> QualityBoard: ...


class StaticQuality:
    """A fixed board: the catalog's priors (no evidence), or tallies given in tests."""

    def __init__(self, board: QualityBoard | None = None) -> None:
        self._board = board or QualityBoard()

    async def board(self) -> QualityBoard:
        return self._board


def tallies_from(evidence: Iterable[Evidence]) -> list[Tally]:
    """Sum evidence into tallies (what SQL's `quality_tallies` keeps, for tests and replay)."""
    sums: dict[tuple[str, Capability, Complexity], tuple[int, float]] = {}
    for e in evidence:
        key = (e.deployment, e.capability, e.complexity)
        n, s = sums.get(key, (0, 0.0))
        sums[key] = (n + 1, s + e.score)
    return [Tally(d, cap, cx, n, s) for (d, cap, cx), (n, s) in sums.items()]


def evidence_for(request: ChatRequest, deployment: str, score: float) -> Evidence:
    """A score for `deployment`'s answer to `request`, counted under the class the planner gave it
    (the request's own `capability` preference wins over the classifier, as in `build_plan`).
    """
    guess = classify(request.prompt_text())
    capability = request.preferences.capability or guess.capability
    return Evidence(deployment, capability, guess.complexity, score)
