"""Strategies order candidates correctly and every constraint excludes with its reason."""

from __future__ import annotations

from typing import Any

import pytest

from router_core import (
    Catalog,
    ChatRequest,
    CircuitState,
    DeploymentSnapshot,
    ExclusionReason,
    InvalidRequestError,
    NoRouteError,
    PlanLimits,
    Strategy,
    build_plan,
)
from router_core.classify import classify
from router_core.models import Capability, Complexity
from tests.conftest import TRIO, deployment, make_catalog


def request(text: str = "Tell me about the weather on Mars", **prefs: Any) -> ChatRequest:
    extra = {k: prefs.pop(k) for k in ("model", "max_tokens") if k in prefs}
    return ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": text}], "preferences": prefs, **extra}
    )


def order(catalog: Catalog, req: ChatRequest, **kw: Any) -> list[str]:
    return [c.deployment for c in build_plan(req, catalog, {}, **kw).candidates]


@pytest.mark.parametrize(
    ("prefs", "expected"),
    [
        ({"strategy": "cost"}, ["cheap-a", "fast-b", "smart-c"]),
        ({"strategy": "speed"}, ["fast-b", "cheap-a", "smart-c"]),
        ({"strategy": "fast"}, ["fast-b", "cheap-a", "smart-c"]),
        ({"strategy": "quality"}, ["smart-c", "fast-b", "cheap-a"]),
        ({"strategy": "accurate"}, ["smart-c", "fast-b", "cheap-a"]),
        (
            {"strategy": "balanced", "weights": {"cost": 1, "latency": 0, "quality": 0}},
            ["cheap-a", "fast-b", "smart-c"],
        ),
        (
            {"strategy": "balanced", "weights": {"cost": 0, "latency": 1, "quality": 1}},
            ["fast-b", "smart-c", "cheap-a"],
        ),
        ({"strategy": "balanced"}, ["fast-b", "cheap-a", "smart-c"]),
        ({"strategy": "fallback_chain", "chain": ["smart-c", "cheap-a"]}, ["smart-c", "cheap-a"]),
    ],
)
def test_strategy_orders_candidates(trio: Catalog, prefs: dict[str, Any], expected: list[str]) -> None:
    assert order(trio, request(**prefs)) == expected


def test_plan_estimates_cost_from_tokens(trio: Catalog) -> None:
    plan = build_plan(request("x" * 400, strategy="cost", max_tokens=100), trio, {})
    assert plan.prompt_tokens_estimate == 100 + 4
    assert plan.completion_tokens_estimate == 100
    cheap = plan.candidates[0]
    assert cheap.estimated_cost_usd == pytest.approx(104 * 0.1e-6 + 100 * 0.4e-6)


def test_round_robin_rotates_primary(trio: Catalog) -> None:
    primaries = [order(trio, request(strategy="round_robin"), rotation=r)[0] for r in range(4)]
    assert primaries == ["cheap-a", "fast-b", "smart-c", "cheap-a"]


def test_least_loaded_prefers_idle_capacity(trio: Catalog) -> None:
    stats = {
        "cheap-a": DeploymentSnapshot(in_flight=50),
        "fast-b": DeploymentSnapshot(in_flight=90),
        "smart-c": DeploymentSnapshot(in_flight=0),
    }
    plan = build_plan(request(strategy="least_loaded"), trio, stats)
    assert [c.deployment for c in plan.candidates] == ["smart-c", "cheap-a", "fast-b"]


def test_speed_uses_live_latency_and_success_rate(trio: Catalog) -> None:
    # fast-b has become slow and flaky: live stats override the catalog prior.
    stats = {"fast-b": DeploymentSnapshot(latency_ewma_ms=3000, success_rate=0.5)}
    plan = build_plan(request(strategy="speed"), trio, stats)
    assert [c.deployment for c in plan.candidates] == ["cheap-a", "smart-c", "fast-b"]


def test_capability_match_is_boosted() -> None:
    catalog = make_catalog(
        [
            deployment("plain-a", price={"input_per_mtok": 1.0, "output_per_mtok": 4.0}),
            deployment(
                "coder-b", capabilities=["code"], price={"input_per_mtok": 1.05, "output_per_mtok": 4.2}
            ),
        ]
    )
    code_prompt = request("Write a Python function that parses ISO dates, with unit tests", strategy="cost")
    assert order(catalog, code_prompt) == ["coder-b", "plain-a"]
    # Without the match the cheaper one wins.
    assert order(catalog, request("Tell me a fun fact about otters", strategy="cost")) == [
        "plain-a",
        "coder-b",
    ]


def test_explicit_capability_overrides_classifier() -> None:
    catalog = make_catalog(
        [
            deployment("plain-a"),
            deployment(
                "trans-b",
                capabilities=["translation"],
                price={"input_per_mtok": 1.05, "output_per_mtok": 4.2},
            ),
        ]
    )
    plan = build_plan(request("hello there", strategy="cost", capability="translation"), catalog, {})
    assert plan.capability is Capability.TRANSLATION
    assert plan.primary.deployment == "trans-b"


def test_primary_explicit_fallbacks_come_next() -> None:
    deps = [dict(d) for d in TRIO]
    deps[0]["fallbacks"] = ["smart-c"]
    plan = build_plan(request(strategy="cost"), make_catalog(deps), {})
    assert [c.deployment for c in plan.candidates] == ["cheap-a", "smart-c", "fast-b"]


def test_pinned_deployment_goes_first_with_fallbacks_after(trio: Catalog) -> None:
    assert order(trio, request(strategy="cost", model="smart-c")) == ["smart-c", "cheap-a", "fast-b"]
    assert order(trio, request(strategy="cost", model="fast-b-model")) == ["fast-b", "cheap-a", "smart-c"]


def test_unknown_model_names_the_field(trio: Catalog) -> None:
    with pytest.raises(InvalidRequestError, match="model") as info:
        build_plan(request(model="gpt-9"), trio, {})
    assert info.value.field == "model"


def test_unknown_chain_id_is_rejected(trio: Catalog) -> None:
    with pytest.raises(InvalidRequestError, match="nope"):
        build_plan(request(strategy="fallback_chain", chain=["nope"]), trio, {})


def with_embedder() -> Catalog:
    """The trio with the cheapest, fastest deployment of all being an embedding one."""
    cheapest = {"price": {"input_per_mtok": 0.01, "output_per_mtok": 0.0}, "quality": 1.0, "latency_ms": 10}
    return make_catalog([deployment("emb-z", task="embedding", **cheapest), *TRIO])


@pytest.mark.parametrize("strategy", [s.value for s in Strategy if s is not Strategy.FALLBACK_CHAIN])
def test_embedding_deployments_are_never_planned_for_chat(strategy: str) -> None:
    plan = build_plan(request(strategy=strategy), with_embedder(), {})
    assert "emb-z" not in [c.deployment for c in plan.candidates]
    assert "emb-z" not in [e.deployment for e in plan.excluded]
    assert len(plan.candidates) == 3


@pytest.mark.parametrize(
    ("prefs", "field"),
    [
        ({"model": "emb-z"}, "model"),
        ({"model": "emb-z-model"}, "model"),
        ({"strategy": "fallback_chain", "chain": ["emb-z", "fast-b"]}, "preferences.chain"),
    ],
)
def test_a_chat_request_naming_an_embedding_deployment_is_refused(prefs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError, match="embedding deployment") as info:
        build_plan(request(**prefs), with_embedder(), {})
    assert info.value.field == field


def reasons(plan_excluded: list[Any]) -> dict[str, ExclusionReason]:
    return {e.deployment: e.reason for e in plan_excluded}


@pytest.mark.parametrize(
    ("prefs", "excluded", "reason"),
    [
        ({"max_cost_per_request": 0.001}, "smart-c", ExclusionReason.OVER_BUDGET),
        ({"max_latency_ms": 1000}, "smart-c", ExclusionReason.OVER_LATENCY),
        ({"min_quality": 0.7}, "cheap-a", ExclusionReason.BELOW_QUALITY),
        ({"exclude_providers": ["fast"]}, "fast-b", ExclusionReason.EXCLUDED_PROVIDER),
        ({"include_providers": ["cheap", "smart"]}, "fast-b", ExclusionReason.NOT_INCLUDED_PROVIDER),
        (
            {"strategy": "fallback_chain", "chain": ["cheap-a", "smart-c"]},
            "fast-b",
            ExclusionReason.NOT_IN_CHAIN,
        ),
    ],
)
def test_constraint_excludes_with_reason(
    trio: Catalog, prefs: dict[str, Any], excluded: str, reason: ExclusionReason
) -> None:
    plan = build_plan(request(max_tokens=100, **prefs), trio, {})
    assert reasons(plan.excluded) == {excluded: reason}
    assert excluded not in [c.deployment for c in plan.candidates]
    assert all(e.detail for e in plan.excluded)


def test_context_too_small_is_excluded() -> None:
    catalog = make_catalog(
        [deployment("small-a", context_window=1_000), deployment("big-b", context_window=200_000)]
    )
    plan = build_plan(request("word " * 2000, max_tokens=100), catalog, {})
    assert reasons(plan.excluded) == {"small-a": ExclusionReason.CONTEXT_TOO_SMALL}
    assert "context window 1000" in plan.excluded[0].detail


def test_open_circuit_is_excluded(trio: Catalog) -> None:
    plan = build_plan(request(), trio, {"fast-b": DeploymentSnapshot(circuit=CircuitState.OPEN)})
    assert reasons(plan.excluded) == {"fast-b": ExclusionReason.CIRCUIT_OPEN}
    # Half-open lets a probe through.
    plan = build_plan(request(), trio, {"fast-b": DeploymentSnapshot(circuit=CircuitState.HALF_OPEN)})
    assert plan.excluded == []


def test_no_route_lists_every_reason(trio: Catalog) -> None:
    with pytest.raises(NoRouteError) as info:
        build_plan(request(min_quality=0.99), trio, {})
    assert {e.deployment for e in info.value.exclusions} == {"cheap-a", "fast-b", "smart-c"}
    assert "min_quality" in str(info.value)


def test_pinned_but_excluded_says_why(trio: Catalog) -> None:
    with pytest.raises(NoRouteError, match="smart-c"):
        build_plan(request(model="smart-c", max_cost_per_request=0.0001), trio, {})


def test_max_candidates_limits_plan(trio: Catalog) -> None:
    plan = build_plan(request(strategy="cost"), trio, {}, limits=PlanLimits(max_candidates=2))
    assert [c.deployment for c in plan.candidates] == ["cheap-a", "fast-b"]


@pytest.mark.parametrize(
    ("text", "capability"),
    [
        ("Write a Python function to reverse a linked list", Capability.CODE),
        ("Solve the equation 3x + 7 = 22", Capability.MATH),
        ("Translate 'good morning' into Spanish", Capability.TRANSLATION),
        ("Summarize this article in three bullet points", Capability.SUMMARIZATION),
        ("Compare the trade-offs of Kafka and RabbitMQ", Capability.ANALYSIS),
        ("Write a short poem about autumn leaves", Capability.WRITING),
        ("What is the capital of Australia?", Capability.SIMPLE_QA),
        ("Hello", Capability.GENERAL),
    ],
)
def test_classifier(text: str, capability: Capability) -> None:
    assert classify(text).capability is capability


def test_complexity_grows_with_length_and_reasoning() -> None:
    assert classify("What is 2+2?").complexity is Complexity.LOW
    long_design = "Design a detailed, comprehensive architecture step by step. " + "context " * 2000
    assert classify(long_design).complexity is Complexity.HIGH


def test_strategy_validation_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="strategy"):
        request(strategy="cheapest")
    with pytest.raises(ValueError, match="chain"):
        request(strategy="fallback_chain")
    with pytest.raises(ValueError, match="max_cost_per_request"):
        request(max_cost_per_request=-1)
    assert request(strategy="FAST").preferences.strategy is Strategy.SPEED
