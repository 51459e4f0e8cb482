"""The router end to end through the official SDKs' real HTTP code paths against the in-process sim."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from router_core import (
    AllAttemptsFailedError,
    AttemptOutcome,
    CallOutcome,
    Catalog,
    ChatRequest,
    CircuitState,
    ExclusionReason,
    FakeClock,
    NoRouteError,
)
from router_core.sim import SimProfile
from tests.conftest import RouterFactory, deployment, make_catalog
from tests.fleet_state_contract import Purse


def ask(text: str = "Tell me about the weather on Mars", **kw: Any) -> ChatRequest:
    prefs = kw.pop("preferences", {"strategy": "cost"})
    return ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": text}], "preferences": prefs, **kw}
    )


def scripted(*script: str, **profile: Any) -> dict[str, Any]:
    return {"script": list(script), "seed": 1, **profile}


async def test_success_through_openai_sdk_is_marked_simulated(make_router: RouterFactory) -> None:
    catalog = make_catalog([deployment("only-a", sim={"output_tokens": 20, "seed": 3})])
    router = make_router(catalog)
    result = await router.complete(ask("Say hello", max_tokens=50))
    assert result.deployment == "only-a"
    assert result.simulated is True
    assert result.content.startswith("[simulated only-a]")
    assert result.usage.output_tokens == 20
    assert result.usage.input_tokens > 0
    assert result.cost_usd == pytest.approx(result.usage.input_tokens * 1e-6 + 20 * 4e-6)
    assert [a.outcome for a in result.attempts] == [AttemptOutcome.SUCCESS]
    assert result.attempts[0].simulated is True


async def test_anthropic_sdk_path_and_cost_match_genai_prices(make_router: RouterFactory) -> None:
    catalog = make_catalog(
        [
            deployment(
                "claude-a",
                kind="anthropic",
                model="claude-haiku-4-5",
                price=None,
                sim={"output_tokens": 40, "seed": 2},
            )
        ]
    )
    router = make_router(catalog)
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Summarize the plot of Hamlet."},
            ],
            "max_tokens": 100,
        }
    )
    result = await router.complete(request)
    assert result.provider == "claude"
    assert result.simulated
    assert result.finish_reason == "stop"  # end_turn, in the OpenAI vocabulary
    expected = calc_price(
        PriceUsage(input_tokens=result.usage.input_tokens, output_tokens=40),
        "claude-haiku-4-5",
        provider_id="anthropic",
    )
    assert result.cost_usd == pytest.approx(float(expected.total_price), rel=1e-12)


async def test_openai_model_cost_matches_genai_prices(make_router: RouterFactory) -> None:
    catalog = make_catalog([deployment("mini", kind="openai", model="gpt-4o-mini", price=None)])
    result = await make_router(catalog).complete(ask(max_tokens=30))
    expected = calc_price(
        PriceUsage(input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens),
        "gpt-4o-mini",
        provider_id="openai",
    )
    assert result.cost_usd == pytest.approx(float(expected.total_price), rel=1e-12)
    assert result.cost_usd > 0


async def test_failover_after_5xx(make_router: RouterFactory, clock: FakeClock) -> None:
    catalog = make_catalog(
        [
            deployment(
                "first-a",
                price={"input_per_mtok": 0.1, "output_per_mtok": 0.1},
                sim=scripted(*["server_error"] * 3),
            ),
            deployment("second-b", sim={"seed": 1}),
        ]
    )
    result = await make_router(catalog).complete(ask())
    assert result.deployment == "second-b"
    assert [(a.deployment, a.error_class, a.status_code) for a in result.attempts] == [
        ("first-a", "ProviderServerError", 500),
        ("first-a", "ProviderServerError", 500),
        ("first-a", "ProviderServerError", 500),
        ("second-b", None, None),
    ]
    assert result.failovers == 1
    # Backoff with full jitter between retries on first-a: base 0.5 s doubling, never above the cap.
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.5
    assert 0 <= clock.sleeps[1] <= 1.0
    assert result.attempts[3].wait_ms == 0  # failing over does not wait


async def test_a_call_not_billed_gives_its_hold_back_and_the_answer_keeps_its_own(
    make_router: RouterFactory,
) -> None:
    """Each attempt is held before it is made; a 500 (not billed) gives its hold back with its slot,
    the answered call keeps its hold for whoever records the charge (`SpendGuard`)."""
    catalog = make_catalog(
        [deployment("first-a", sim=scripted(*["server_error"] * 3)), deployment("second-b", sim={"seed": 1})]
    )
    purse = Purse(room=1.0)
    result = await make_router(catalog).complete(ask(max_tokens=50), guard=purse)
    assert [(a.deployment, a.status_code) for a in result.attempts] == [("first-a", 500)] * 3 + [
        ("second-b", None)
    ]
    assert list(purse.held) == [4]  # attempts 1-3 gave their holds back when first-a answered 500
    assert purse.held[4] >= result.cost_usd  # the worst case, at least what the answer cost


async def test_429_retry_after_is_waited(make_router: RouterFactory, clock: FakeClock) -> None:
    catalog = make_catalog([deployment("busy-a", sim=scripted("rate_limit", "ok", retry_after_s=2))])
    result = await make_router(catalog).complete(ask())
    assert result.deployment == "busy-a"
    assert [a.error_class for a in result.attempts] == ["RateLimitedError", None]
    assert clock.sleeps
    assert clock.sleeps[0] >= 2.0
    assert result.attempts[1].wait_ms >= 2000


async def test_retry_after_longer_than_limit_fails_over(make_router: RouterFactory, clock: FakeClock) -> None:
    catalog = make_catalog(
        [
            deployment(
                "busy-a",
                price={"input_per_mtok": 0.1, "output_per_mtok": 0.1},
                sim=scripted("rate_limit", retry_after_s=600),
            ),
            deployment("idle-b"),
        ]
    )
    result = await make_router(catalog, max_retry_after_s=30).complete(ask())
    assert result.deployment == "idle-b"
    assert clock.sleeps == []


async def test_context_length_error_skips_to_larger_context(make_router: RouterFactory) -> None:
    # The catalog claims 100k tokens, but the provider (sim) only takes 50: the router must learn
    # from the error, skip the other 100k deployment, and go to the 200k one.
    catalog = make_catalog(
        [
            deployment(
                "small-a", price={"input_per_mtok": 0.1, "output_per_mtok": 0.1}, sim={"context_window": 50}
            ),
            deployment(
                "small-b", price={"input_per_mtok": 0.2, "output_per_mtok": 0.2}, sim={"context_window": 50}
            ),
            deployment("large-c", context_window=200_000),
        ]
    )
    result = await make_router(catalog).complete(ask("lorem ipsum " * 100))
    assert result.deployment == "large-c"
    assert [(a.deployment, a.error_class) for a in result.attempts] == [
        ("small-a", "ContextLengthError"),
        ("large-c", None),
    ]


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        ("malformed", "MalformedResponseError"),
        ("drop", "ProviderConnectionError"),
        ("server_error", "ProviderServerError"),
        ("rate_limit", "RateLimitedError"),
    ],
)
async def test_retryable_faults_are_retried_on_same_deployment(
    make_router: RouterFactory, fault: str, error_class: str
) -> None:
    catalog = make_catalog([deployment("flaky-a", sim=scripted(fault, "ok"))])
    result = await make_router(catalog).complete(ask())
    assert [(a.deployment, a.error_class) for a in result.attempts] == [
        ("flaky-a", error_class),
        ("flaky-a", None),
    ]


async def test_hanging_provider_times_out(make_router: RouterFactory) -> None:
    # The sim hangs on its own (real) clock; the attempt's 50 ms timeout cuts it short.
    catalog = make_catalog([deployment("slow-a", sim=scripted("timeout", "ok", hang_s=30))])
    result = await make_router(catalog).complete(ask(preferences={"timeout_ms": 50}))
    assert [a.error_class for a in result.attempts] == ["ProviderTimeoutError", None]
    assert result.attempts[0].latency_ms >= 0


async def test_all_attempts_failed_carries_every_attempt(make_router: RouterFactory) -> None:
    catalog = make_catalog(
        [
            deployment("bad-a", sim={"error_rate": 1.0, "seed": 1}),
            deployment("bad-b", sim={"error_rate": 1.0, "seed": 1}),
        ]
    )
    router = make_router(catalog, max_attempts_per_deployment=2)
    with pytest.raises(AllAttemptsFailedError) as info:
        await router.complete(ask())
    assert [a.deployment for a in info.value.attempts] == ["bad-a", "bad-a", "bad-b", "bad-b"]
    assert "bad-a, bad-b" in str(info.value)
    assert all(a.outcome is AttemptOutcome.ERROR for a in info.value.attempts)


async def test_total_attempt_cap(make_router: RouterFactory) -> None:
    catalog = make_catalog([deployment(f"bad-{i}", sim={"error_rate": 1.0, "seed": i}) for i in range(5)])
    with pytest.raises(AllAttemptsFailedError) as info:
        await make_router(catalog, max_attempts_total=4).complete(ask())
    assert len(info.value.attempts) == 4


async def test_circuit_opens_after_repeated_failures_and_plan_says_so(
    make_router: RouterFactory, clock: FakeClock
) -> None:
    catalog = make_catalog(
        [
            deployment(
                "down-a",
                price={"input_per_mtok": 0.1, "output_per_mtok": 0.1},
                sim={"error_rate": 1.0, "seed": 1},
            ),
            deployment("up-b"),
        ]
    )
    router = make_router(catalog, max_attempts_per_deployment=5)
    await router.complete(ask())  # five 500s on down-a open its circuit, then up-b answers
    plan = await router.plan(ask())
    assert [(e.deployment, e.reason) for e in plan.excluded] == [("down-a", ExclusionReason.CIRCUIT_OPEN)]
    stats = await router.fleet.snapshot(["down-a"])
    assert stats["down-a"].circuit is CircuitState.OPEN
    clock.advance(31)  # past the cooldown the breaker half-opens and lets a probe through
    assert (await router.plan(ask())).excluded == []
    assert router.sim_world is not None
    router.sim_world.set_profile("down-a", SimProfile(seed=1))
    result = await router.complete(ask())
    assert result.deployment == "down-a"
    assert (await router.fleet.snapshot(["down-a"]))["down-a"].circuit is CircuitState.CLOSED


async def test_no_route_error_from_complete(make_router: RouterFactory) -> None:
    catalog = make_catalog([deployment("only-a", quality=0.5)])
    with pytest.raises(NoRouteError) as info:
        await make_router(catalog).complete(ask(preferences={"min_quality": 0.9}))
    assert info.value.exclusions[0].reason is ExclusionReason.BELOW_QUALITY


async def test_live_stats_feed_speed_strategy(make_router: RouterFactory, clock: FakeClock) -> None:
    catalog: Catalog = make_catalog([deployment("a-a", latency_ms=100), deployment("b-b", latency_ms=200)])
    router = make_router(catalog)
    # Record that a-a has really been slow.
    slow = catalog["a-a"]
    for _ in range(10):
        admission = await router.fleet.admit(slow, 10)
        await router.fleet.release(slow, admission, CallOutcome.SUCCESS, 900.0, None)
    plan = await router.plan(ask(preferences={"strategy": "speed"}))
    assert [c.deployment for c in plan.candidates] == ["b-b", "a-a"]


async def test_round_robin_spreads_across_deployments(make_router: RouterFactory) -> None:
    catalog = make_catalog([deployment("a-a"), deployment("b-b"), deployment("c-c")])
    router = make_router(catalog)
    used = [
        (await router.complete(ask(preferences={"strategy": "round_robin"}))).deployment for _ in range(6)
    ]
    assert used == ["a-a", "b-b", "c-c", "a-a", "b-b", "c-c"]


async def test_cancelled_call_does_not_leak_in_flight(make_router: RouterFactory) -> None:
    catalog = make_catalog([deployment("slow-a", sim=scripted("timeout", hang_s=30))])
    router = make_router(catalog)
    task = asyncio.create_task(router.complete(ask()))
    for _ in range(50):  # let the call reach the provider
        await asyncio.sleep(0)
        if (await router.fleet.snapshot(["slow-a"]))["slow-a"].in_flight:
            break
    assert (await router.fleet.snapshot(["slow-a"]))["slow-a"].in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await router.fleet.snapshot(["slow-a"]))["slow-a"].in_flight == 0
