"""Planning: from a request, the catalog and a fleet-state snapshot to an ordered list of candidates.

A pure function of its inputs (no I/O), so it is cheap to test and to benchmark. Steps:
classify the prompt, estimate tokens, cost and latency per chat deployment (embedding deployments
are never candidates, nor listed as exclusions), exclude those that break a constraint (recording
why; one outside the API key's `allowed_models` first of all), rank the rest with the strategy,
put a pinned `model` first and the primary's explicit `fallbacks` right after it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router_core.catalog import Catalog, Deployment, Task
from router_core.chat import Feature
from router_core.classify import classify
from router_core.errors import InvalidRequestError, NoRouteError
from router_core.fleet import CircuitState, DeploymentSnapshot, Forced
from router_core.models import (
    Candidate,
    ChatRequest,
    Complexity,
    Escalation,
    EscalationPlan,
    Exclusion,
    ExclusionReason,
    Plan,
    Preferences,
    Strategy,
)
from router_core.policy import model_allowed
from router_core.quality import QualityBoard
from router_core.strategies import Option, RankContext, escalation_bar, rank
from router_core.tokens import prompt_tokens

__all__ = ["PlanLimits", "answer_fits", "build_plan", "call_tokens", "check_references"]

_BOOST = {Complexity.LOW: 1.10, Complexity.MEDIUM: 1.20, Complexity.HIGH: 1.30}


@dataclass(frozen=True, slots=True)
class PlanLimits:
    default_completion_tokens: int = 512
    max_candidates: int = 5


@dataclass(frozen=True, slots=True)
class _Estimate:
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_ms: float
    quality: float  # learned, or the catalog's prior without evidence


_NO_EVIDENCE = QualityBoard()


def call_tokens(dep: Deployment, request: ChatRequest, prompt: int, completion: int) -> tuple[int, int]:
    """Prompt and completion tokens of serving `request` on `dep`, all `n` answers included.

    A deployment with native `n` reads the prompt once; others get `n` calls (a fan-out), each
    reading it again.
    """
    n = request.choices
    if n == 1:
        return prompt, completion
    return (prompt if Feature.N in dep.features else prompt * n), completion * n


def unsupported(dep: Deployment, needs: Mapping[Feature, str]) -> str | None:
    """`unsupported: tools, vision` when `dep` lacks features the request needs, else None."""
    missing = [feature.value for feature in Feature if feature in needs and feature not in dep.features]
    return f"unsupported: {', '.join(missing)}" if missing else None


Check = Callable[
    [Deployment, Preferences, _Estimate, DeploymentSnapshot], "tuple[ExclusionReason, str] | None"
]


def _chain(
    dep: Deployment, p: Preferences, e: _Estimate, s: DeploymentSnapshot
) -> tuple[ExclusionReason, str] | None:
    if p.strategy is Strategy.FALLBACK_CHAIN and dep.id not in (p.chain or []):
        return ExclusionReason.NOT_IN_CHAIN, "not in the fallback_chain 'chain' list"
    return None


def _allowed(
    dep: Deployment, p: Preferences, e: _Estimate, s: DeploymentSnapshot
) -> tuple[ExclusionReason, str] | None:
    if p.allowed_models is not None and not model_allowed(p.allowed_models, dep):
        allowed = ", ".join(p.allowed_models) or "none"
        return ExclusionReason.NOT_ALLOWED, f"not allowed for this key (allowed models: {allowed})"
    return None


def _providers(
    dep: Deployment, p: Preferences, e: _Estimate, s: DeploymentSnapshot
) -> tuple[ExclusionReason, str] | None:
    names = {dep.provider, dep.kind.value}
    if p.exclude_providers and names & set(p.exclude_providers):
        return ExclusionReason.EXCLUDED_PROVIDER, f"provider {dep.provider!r} is in exclude_providers"
    if p.include_providers and not names & set(p.include_providers):
        return ExclusionReason.NOT_INCLUDED_PROVIDER, f"provider {dep.provider!r} is not in include_providers"
    return None


def _circuit(
    dep: Deployment, p: Preferences, e: _Estimate, s: DeploymentSnapshot
) -> tuple[ExclusionReason, str] | None:
    if s.forced is Forced.DOWN:
        return ExclusionReason.FORCED_DOWN, "forced down by an operator"
    if s.circuit is CircuitState.OPEN:
        return ExclusionReason.CIRCUIT_OPEN, "circuit open after repeated failures"
    return None


def _context(
    dep: Deployment, p: Preferences, e: _Estimate, s: DeploymentSnapshot
) -> tuple[ExclusionReason, str] | None:
    needed = e.prompt_tokens + e.completion_tokens
    if needed > dep.context_window:
        return (
            ExclusionReason.CONTEXT_TOO_SMALL,
            f"needs ~{needed} tokens (prompt + max_tokens) > context window {dep.context_window}",
        )
    if dep.tpm is not None and needed > dep.tpm:
        return (
            ExclusionReason.OVER_RATE_LIMIT,
            f"needs ~{needed} tokens (prompt + max_tokens) > its whole tpm limit {dep.tpm}",
        )
    return None


def _quality(
    dep: Deployment, p: Preferences, e: _Estimate, s: DeploymentSnapshot
) -> tuple[ExclusionReason, str] | None:
    if p.min_quality is not None and e.quality < p.min_quality:
        return ExclusionReason.BELOW_QUALITY, f"quality {e.quality:.2f} < min_quality {p.min_quality:.2f}"
    return None


def _budget(
    dep: Deployment, p: Preferences, e: _Estimate, s: DeploymentSnapshot
) -> tuple[ExclusionReason, str] | None:
    if p.max_cost_per_request is not None and e.cost > p.max_cost_per_request:
        return (
            ExclusionReason.OVER_BUDGET,
            f"estimated ${e.cost:.6f} > max_cost_per_request ${p.max_cost_per_request:.6f}",
        )
    return None


def _latency(
    dep: Deployment, p: Preferences, e: _Estimate, s: DeploymentSnapshot
) -> tuple[ExclusionReason, str] | None:
    if p.max_latency_ms is not None and e.latency_ms > p.max_latency_ms:
        return (
            ExclusionReason.OVER_LATENCY,
            f"estimated {e.latency_ms:.0f} ms > max_latency_ms {p.max_latency_ms:.0f}",
        )
    return None


# Order matters: the first failing check is the reason reported. Each check is paired with whether
# the preferences make it relevant at all, so a plan runs only the checks it needs (planning is on
# every job's path).
_CHECKS: tuple[tuple[Callable[[Preferences], bool], Check], ...] = (
    (lambda p: p.allowed_models is not None, _allowed),
    (lambda p: p.strategy is Strategy.FALLBACK_CHAIN, _chain),
    (lambda p: bool(p.include_providers or p.exclude_providers), _providers),
    (lambda p: True, _circuit),
    (lambda p: True, _context),
    (lambda p: p.min_quality is not None, _quality),
    (lambda p: p.max_cost_per_request is not None, _budget),
    (lambda p: p.max_latency_ms is not None, _latency),
)


def build_plan(
    request: ChatRequest,
    catalog: Catalog,
    snapshot: Mapping[str, DeploymentSnapshot],
    *,
    rotation: int = 0,
    limits: PlanLimits = PlanLimits(),
    quality: QualityBoard = _NO_EVIDENCE,
) -> Plan:
    """Rank the catalog's deployments for `request`.

    `quality` holds the learned scores (`router_core.quality`); the `quality` and `balanced`
    strategies and `min_quality` use a deployment's learned score for the prompt's capability,
    or its catalog quality when it has no evidence. Under `escalate` a deployment's quality is
    its learned score on prompts of the prompt's complexity instead (min_quality included), and
    the plan's `escalation` says the bar it was held to.

    Raises:
        InvalidRequestError: `model` names no deployment or model, or `chain` names unknown ids.
        NoRouteError: every deployment is excluded; the error lists each reason.
    """
    prefs = request.preferences
    check_references(request, catalog)
    texts = [m.text() for m in request.messages]  # once: joining content parts costs per message
    guess = classify("\n".join(texts))  # the same text as request.prompt_text()
    capability = prefs.capability or guess.capability
    p_tokens = prompt_tokens(texts) + sum(m.image_tokens() for m in request.messages)
    c_tokens = request.max_tokens or limits.default_completion_tokens
    needs = request.required_features()

    checks = [check for relevant, check in _CHECKS if relevant(prefs)]
    options: list[Option] = []
    excluded: list[Exclusion] = []
    for position, dep in enumerate(catalog.values()):
        if dep.task is not Task.CHAT:
            continue
        if not dep.enabled:  # an operator took it out of routing, in the catalog rather than Redis
            excluded.append(
                Exclusion(
                    deployment=dep.id, reason=ExclusionReason.FORCED_DOWN, detail="disabled in the catalog"
                )
            )
            continue
        st = snapshot.get(dep.id) or DeploymentSnapshot()
        missing = unsupported(dep, needs) if needs else None
        if missing is not None:
            excluded.append(Exclusion(deployment=dep.id, reason=ExclusionReason.UNSUPPORTED, detail=missing))
            continue
        learned = (
            quality.by_complexity(dep, guess.complexity)
            if prefs.strategy is Strategy.ESCALATE
            else quality.score(dep, capability)
        )
        est = _Estimate(
            prompt_tokens=p_tokens,
            completion_tokens=c_tokens,
            cost=catalog.price(dep.id).estimate(*call_tokens(dep, request, p_tokens, c_tokens)),
            latency_ms=st.latency_ewma_ms if st.latency_ewma_ms is not None else dep.latency_ms,
            quality=learned.value,
        )
        failure = next((f for check in checks if (f := check(dep, prefs, est, st))), None)
        if failure is not None:
            excluded.append(Exclusion(deployment=dep.id, reason=failure[0], detail=failure[1]))
            continue
        options.append(
            Option(dep, position, est.cost, est.latency_ms, st, capability in dep.capabilities, learned)
        )

    ranked = rank(options, RankContext(prefs, _BOOST[guess.complexity], rotation))
    ordered = _probes_first(_pin_and_fallbacks(request, catalog, ranked, excluded))
    if not ordered:
        raise NoRouteError(
            "no deployment satisfies the request; relax the constraint named for each deployment",
            excluded,
        )
    candidates = [
        Candidate(
            deployment=o.deployment.id,
            provider=o.deployment.provider,
            model=o.deployment.model,
            estimated_cost_usd=o.est_cost,
            estimated_latency_ms=o.est_latency_ms,
            score=score,
            capability_match=o.capability_match,
            quality=round(o.quality.value, 4),
            quality_source=o.quality.source,
            quality_samples=o.quality.samples,
        )
        for o, score in ordered[: limits.max_candidates]
    ]
    return Plan(
        strategy=prefs.strategy,
        strategy_source=prefs.strategy_source,
        capability=capability,
        complexity=guess.complexity,
        prompt_tokens_estimate=p_tokens,
        completion_tokens_estimate=c_tokens,
        candidates=candidates,
        excluded=excluded,
        escalation=_escalation(prefs, guess.complexity, options),
    )


def _escalation(prefs: Preferences, complexity: Complexity, options: list[Option]) -> EscalationPlan | None:
    """What an escalate plan was held to (None for the other strategies)."""
    if prefs.strategy is not Strategy.ESCALATE or not options:
        return None
    tolerance = (prefs.escalation or Escalation()).effective_tolerance
    best, threshold = escalation_bar(options, tolerance)
    learned = any(o.quality.samples for o in options)
    return EscalationPlan(
        complexity=complexity,
        tolerance=tolerance,
        best=round(best, 4),
        threshold=round(threshold, 4),
        source="learned" if learned else "prior",
    )


def _probes_first(ordered: list[tuple[Option, float]]) -> list[tuple[Option, float]]:
    """Half-open deployments go first: their breaker admits only a probe or two fleet-wide, and
    every other call is refused at once and moves on. Ranked by their (poor) recent stats they
    would never be tried, so their circuit would never close again.
    """
    probes = [o for o in ordered if o[0].stats.circuit is CircuitState.HALF_OPEN]
    return probes + [o for o in ordered if o[0].stats.circuit is not CircuitState.HALF_OPEN]


def check_references(request: ChatRequest, catalog: Catalog) -> None:
    """Check that the request's model and fallback chain name chat deployments the catalog has,
    and that some deployment it may use honours every field it sets.

    Raises:
        InvalidRequestError: with `field` "model", "preferences.chain" or the unhonoured field.
    """
    chat = catalog.chat_deployments()
    chain = request.preferences.chain or []
    unknown = [d for d in chain if d not in catalog]
    if unknown:
        raise InvalidRequestError(
            f"unknown deployment ids {unknown}; known: {sorted(catalog)}", field="preferences.chain"
        )
    embedders = [d for d in chain if catalog[d].task is not Task.CHAT]
    if embedders:
        raise InvalidRequestError(
            f"{embedders} are embedding deployments (task = 'embedding'), not chat ones; "
            f"chat deployment ids: {sorted(d.id for d in chat)}",
            field="preferences.chain",
        )
    model = request.model
    if not catalog.serves(model):
        raise InvalidRequestError(
            f"{model!r} is neither 'auto', a deployment id nor a model in the catalog; "
            f"deployment ids: {sorted(catalog)}",
            field="model",
        )
    if model != "auto" and not any(model in (d.id, d.model) for d in chat):
        raise InvalidRequestError(
            f"{model!r} names an embedding deployment (task = 'embedding'), which cannot answer chat; "
            f"chat deployment ids: {sorted(d.id for d in chat)}",
            field="model",
        )
    needs = request.required_features()
    if not needs:
        return
    pinned = model != "auto" and not request.preferences.allow_fallbacks
    if pinned:
        honoured = frozenset(f for d in chat if model in (d.id, d.model) for f in d.features)
    else:
        honoured = catalog.chat_features()
    for feature, field in needs.items():
        if feature not in honoured:
            what = _NEEDED_BY.get((feature, field), "it")
            if pinned:
                message = (
                    f"model {model!r} cannot honour {what}: it has no '{feature.value}' feature "
                    "and preferences.allow_fallbacks is false"
                )
            else:
                message = (
                    f"no deployment in the catalog honours {what} (none has the '{feature.value}' feature)"
                )
            raise InvalidRequestError(message, field=field)


# What in `messages` needs a feature, for the error that names it.
_NEEDED_BY = {
    (Feature.VISION, "messages"): "its image_url parts",
    (Feature.TOOLS, "messages"): "its tool calls",
}


def _pin_and_fallbacks(
    request: ChatRequest,
    catalog: Catalog,
    ranked: list[tuple[Option, float]],
    excluded: list[Exclusion],
) -> list[tuple[Option, float]]:
    """Pinned deployments first, then the primary's explicit fallbacks, then the rest by rank."""
    if not ranked:
        return ranked
    model = request.model
    if model != "auto":
        pinned = [p for p in ranked if model in (p[0].deployment.id, p[0].deployment.model)]
        if not pinned:
            reasons = [e for e in excluded if model in (e.deployment, catalog[e.deployment].model)]
            raise NoRouteError(f"the requested model {model!r} cannot serve this request", reasons)
        pinned_ids = {p[0].deployment.id for p in pinned}
        others = [p for p in ranked if p[0].deployment.id not in pinned_ids]
        if not request.preferences.allow_fallbacks:
            detail = f"model {model!r} is pinned and preferences.allow_fallbacks is false"
            excluded.extend(
                Exclusion(deployment=p[0].deployment.id, reason=ExclusionReason.NOT_PINNED, detail=detail)
                for p in others
            )
            others = []
        ranked = pinned + others
    primary = ranked[0]
    by_id = {p[0].deployment.id: p for p in ranked}
    explicit_ids = [
        f for f in primary[0].deployment.fallbacks if f in by_id and f != primary[0].deployment.id
    ]
    rest = [p for p in ranked[1:] if p[0].deployment.id not in explicit_ids]
    return [primary, *(by_id[f] for f in explicit_ids), *rest]


def answer_fits(request: ChatRequest, dep: Deployment) -> str | None:
    """Why an answer `dep` gave may not serve `request` (a cached answer), or None if it may.

    Only the request's own constraints count: the key's allowed models, its providers, least
    quality, fallback chain and a pinned model without fallbacks. Cost and latency limits cannot
    fail (a cached answer costs nothing and comes at once), and the fleet's state (breakers,
    limits) says nothing about an answer already given.
    """
    prefs = request.preferences
    estimate = _Estimate(0, 0, 0.0, 0.0, dep.quality)
    for check in (_allowed, _chain, _providers, _quality):
        failure = check(dep, prefs, estimate, DeploymentSnapshot())
        if failure is not None:
            return failure[1]
    if request.model not in ("auto", dep.id, dep.model) and not prefs.allow_fallbacks:
        return f"model {request.model!r} is pinned and preferences.allow_fallbacks is false"
    return None
