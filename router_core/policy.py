"""Policies that come from outside a request: the default strategy and the models a key may use.

No I/O: the producer reads the tenant's default and the key's allowed models, and these functions
apply them to a request before it becomes a job, so the job (and the plan a worker makes of it)
says what was used.

**Default strategy.** A request that names no strategy (`preferences.strategy` unset and no
`router:<strategy>` model) gets, in this order, the tenant's default, the deployment
environment's (`ROUTEQ_DEFAULT_STRATEGY`) or the built-in `balanced`; `preferences.strategy_source`
records which (`request`, `tenant`, `environment`, `default`) and every plan repeats it.

**Allowed models.** A pattern names deployments by id, by served model name or as
`<provider>/<model>` (`openai/gpt-4o-mini`), with `*` and `?` wildcards (`openai/*`,
`claude-*`). `preferences.allowed_models` holds the API key's patterns; the planner excludes every
other deployment (`not_allowed`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from router_core.models import STRATEGY_ALIASES, ChatRequest, Strategy, StrategySource

if TYPE_CHECKING:  # settings validate ROUTEQ_DEFAULT_STRATEGY here: no catalog (prices) at start-up
    from router_core.catalog import Catalog, Deployment

__all__ = [
    "BUILT_IN_STRATEGY",
    "DefaultStrategy",
    "allowed_names",
    "disallowed_model",
    "model_allowed",
    "parse_default_strategy",
    "unhonoured_field",
    "unmatched_patterns",
    "with_allowed_models",
    "with_default_strategy",
]

BUILT_IN_STRATEGY = Strategy.BALANCED
"""The strategy of a request that names none when neither its tenant nor the environment has a default."""


def parse_default_strategy(name: str) -> Strategy:
    """A strategy name (or alias) that may serve as a default.

    Raises:
        ValueError: an unknown name, or `fallback_chain` (it needs a request's own `chain`); the
            message lists the names that work.
    """
    key = name.strip().lower()
    strategy = STRATEGY_ALIASES.get(key)
    if strategy is None and key in set(Strategy):
        strategy = Strategy(key)
    usable = [s.value for s in Strategy if s is not Strategy.FALLBACK_CHAIN] + list(STRATEGY_ALIASES)
    if strategy is None:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(usable)})")
    if strategy is Strategy.FALLBACK_CHAIN:
        raise ValueError(
            "'fallback_chain' cannot be a default: it needs the request's own 'chain' "
            f"(use one of: {', '.join(usable)})"
        )
    return strategy


@dataclass(frozen=True, slots=True)
class DefaultStrategy:
    """`with_default_strategy` with a tenant's and the environment's defaults: a resolver that pickles
    (a process parsing a file resolves its requests) and says what it does (`producer.parsing`)."""

    tenant: Strategy | None
    environment: Strategy | None

    def __call__(self, request: ChatRequest) -> ChatRequest:
        return with_default_strategy(request, self.tenant, self.environment)


def with_default_strategy(
    request: ChatRequest, tenant: Strategy | None, environment: Strategy | None
) -> ChatRequest:
    """`request` with its strategy resolved and `preferences.strategy_source` saying from where.

    Precedence: the request's own strategy > the tenant's default > the environment's
    (`ROUTEQ_DEFAULT_STRATEGY`) > `BUILT_IN_STRATEGY`. A request resolved already (its
    `strategy_source` set) is returned as it is.
    """
    prefs = request.preferences
    if prefs.strategy_source is not None:
        return request
    source: StrategySource
    if "strategy" in prefs.model_fields_set:
        strategy, source = prefs.strategy, "request"
    elif tenant is not None:
        strategy, source = tenant, "tenant"
    elif environment is not None:
        strategy, source = environment, "environment"
    else:
        strategy, source = BUILT_IN_STRATEGY, "default"
    update = {"strategy": strategy, "strategy_source": source}
    return request.model_copy(update={"preferences": prefs.model_copy(update=update)})


def model_allowed(patterns: Iterable[str], dep: Deployment) -> bool:
    """Whether a pattern names `dep`: its id, its model, or `<provider>/<model>` (`*`, `?` wildcards)."""
    names = (dep.id, dep.model, f"{dep.provider}/{dep.model}", f"{dep.provider}/{dep.id}")
    return any(fnmatchcase(name, pattern) for pattern in patterns for name in names)


def unmatched_patterns(patterns: Iterable[str], catalog: Catalog) -> list[str]:
    """The patterns that name no chat deployment of `catalog` (a typo, most likely)."""
    chat = catalog.chat_deployments()
    return [p for p in patterns if not any(model_allowed([p], dep) for dep in chat)]


def allowed_names(patterns: Sequence[str], catalog: Catalog) -> set[str]:
    """Deployment ids and model names a request may name under `patterns`: a model name counts
    when some chat deployment serving it is allowed."""
    allowed = [dep for dep in catalog.chat_deployments() if model_allowed(patterns, dep)]
    return {dep.id for dep in allowed} | {dep.model for dep in allowed}


def disallowed_model(
    request: ChatRequest, patterns: Sequence[str], catalog: Catalog
) -> tuple[str, str] | None:
    """The field and the name in `request` that `patterns` do not allow, or None.

    `model` (unless `auto`) must name an allowed deployment or a model one of them serves; each
    `preferences.chain` entry must be an allowed deployment.
    """
    names = allowed_names(patterns, catalog)
    if request.model != "auto" and request.model not in names:
        return "model", request.model
    for deployment in request.preferences.chain or ():
        if deployment not in names:
            return "preferences.chain", deployment
    return None


def unhonoured_field(
    request: ChatRequest, patterns: Sequence[str], catalog: Catalog
) -> tuple[str, str] | None:
    """A field `request` sets that no deployment `patterns` allow honours, with why; None if there is
    none (the catalog-wide check is the planner's `check_references`)."""
    needs = request.required_features()
    if not needs:
        return None
    allowed = [dep for dep in catalog.chat_deployments() if model_allowed(patterns, dep)]
    honoured = {feature for dep in allowed for feature in dep.features}
    for feature, field in needs.items():
        if feature not in honoured:
            ids = ", ".join(dep.id for dep in allowed) or "none"
            return field, f"no deployment this API key may use honours it ({ids}: none has '{feature.value}')"
    return None


def with_allowed_models(request: ChatRequest, patterns: Sequence[str] | None) -> ChatRequest:
    """`request` limited to the deployments `patterns` allow (None: the request as it is)."""
    if patterns is None:
        return request
    prefs = request.preferences.model_copy(update={"allowed_models": list(patterns)})
    return request.model_copy(update={"preferences": prefs})
