"""Router.stream: text pieces as they arrive through the real SDK stream parsers, then the result."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from producer.client import Client
from router_core import (
    ChatRequest,
    CompletionResult,
    FakeClock,
    ProviderConnectionError,
    Router,
    StreamInterruptedError,
)
from router_core.catalog import Catalog, Deployment
from router_core.models import Usage
from router_core.providers import ProviderReply
from router_core.providers.base import StreamPart
from router_core.tokens import estimate_tokens
from storage.bus.events import EventBus
from storage.fleet.budgets import Budgets, user_scope
from storage.jobs import FailureCode
from tests.backends import Backend
from tests.conftest import RouterFactory, deployment, make_catalog
from workers.runner import JobRunner


def ask(**prefs: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "Tell me a story about a lighthouse"}],
            "max_tokens": 200,
            "preferences": {"strategy": "cost", **prefs},
        }
    )


async def collect(router: Router, request: ChatRequest) -> tuple[list[str], CompletionResult]:
    pieces: list[str] = []
    result: CompletionResult | None = None
    async for part in router.stream(request):
        if isinstance(part, str):
            assert result is None, "text after the result"
            pieces.append(part)
        elif isinstance(part, CompletionResult):
            result = part
    assert result is not None
    return pieces, result


@pytest.mark.parametrize("kind", ["sim", "anthropic"])
async def test_stream_pieces_add_up_to_the_result(make_router: RouterFactory, kind: str) -> None:
    catalog = make_catalog([deployment("story-a", kind=kind, sim={"output_tokens": 40, "seed": 1})])
    pieces, result = await collect(make_router(catalog), ask())
    assert len(pieces) > 3
    assert "".join(pieces) == result.content
    assert result.content.startswith("[simulated story-a]")
    assert estimate_tokens(result.content) == 40
    assert result.usage.output_tokens == 40
    assert result.usage.input_tokens > 0
    assert result.cost_usd == pytest.approx(result.usage.input_tokens * 1e-6 + 40 * 4e-6)
    assert result.simulated
    assert result.attempts[-1].usage == result.usage
    assert result.attempts[-1].cost_usd == result.cost_usd


async def test_stream_fails_over_before_the_first_piece(make_router: RouterFactory, clock: FakeClock) -> None:
    catalog = make_catalog(
        [
            deployment(
                "down-a",
                price={"input_per_mtok": 0.1, "output_per_mtok": 0.1},
                sim={"script": ["server_error", "rate_limit", "malformed"], "retry_after_s": 2},
            ),
            deployment("up-b"),
        ]
    )
    pieces, result = await collect(make_router(catalog), ask())
    assert result.deployment == "up-b"
    assert [(a.deployment, a.error_class) for a in result.attempts] == [
        ("down-a", "ProviderServerError"),
        ("down-a", "RateLimitedError"),
        ("down-a", "MalformedResponseError"),
        ("up-b", None),
    ]
    assert clock.sleeps[1] >= 2.0  # Retry-After honoured before the third try
    assert "".join(pieces) == result.content


class BreakingProvider:
    """A provider whose stream sends two pieces and then fails or stalls."""

    def __init__(self, deployment: Deployment, *, stall: bool = False) -> None:
        self.deployment = deployment
        self.stall = stall

    async def complete(self, request: ChatRequest, *, max_tokens: int, timeout_s: float) -> ProviderReply:
        raise NotImplementedError

    async def stream(
        self, request: ChatRequest, *, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamPart, None]:
        yield "Once upon "
        yield "a time"
        if self.stall:
            await asyncio.sleep(30)
        raise ProviderConnectionError("connection reset mid-stream", deployment=self.deployment.id)

    async def aclose(self) -> None:
        return None


def breaking_router(catalog: Catalog, clock: FakeClock, *, stall: bool) -> Router:
    providers = {d: BreakingProvider(catalog[d], stall=stall) for d in catalog}
    return Router(catalog, providers, clock=clock)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stall", "error"), [(False, "ProviderConnectionError"), (True, "ProviderTimeoutError")]
)
async def test_failure_after_text_interrupts_the_stream(clock: FakeClock, stall: bool, error: str) -> None:
    catalog = make_catalog([deployment("first-a"), deployment("second-b")])
    router = breaking_router(catalog, clock, stall=stall)
    pieces: list[str] = []

    async def consume() -> None:
        async for part in router.stream(ask(timeout_ms=50)):
            assert isinstance(part, str)
            pieces.append(part)

    with pytest.raises(StreamInterruptedError) as info:
        await consume()
    assert pieces == ["Once upon ", "a time"]
    # No failover after text was delivered: one attempt, marked as failed with the cause.
    assert [(a.deployment, a.error_class) for a in info.value.attempts] == [("first-a", error)]
    assert "first-a" in str(info.value)


async def test_a_stream_cut_after_text_is_charged_for_what_it_sent(clock: FakeClock) -> None:
    """The provider bills the prompt and the text it streamed: the attempt carries an estimate."""
    catalog = make_catalog([deployment("first-a")])  # $1 / $4 per million tokens
    router = breaking_router(catalog, clock, stall=False)
    request = ask()
    with pytest.raises(StreamInterruptedError) as info:
        async for _ in router.stream(request):
            pass
    (attempt,) = info.value.attempts
    prompt = (await router.plan(request)).prompt_tokens_estimate
    assert attempt.usage == Usage(input_tokens=prompt, output_tokens=estimate_tokens("Once upon a time"))
    assert attempt.cost_usd == pytest.approx(prompt * 1e-6 + 4 * 4e-6)
    assert attempt.estimated


async def test_a_streamed_job_cut_after_text_is_in_the_ledger_and_the_budget(backend: Backend) -> None:
    catalog = make_catalog([deployment("first-a")])
    client = Client(await backend.redis(), backend.store, backend.settings)
    job_id = await client.submit(ask(), stream=True)
    budgets = Budgets(await backend.redis())
    router = breaking_router(catalog, FakeClock(), stall=False)
    events = EventBus(await backend.redis(), retention_s=60)
    runner = JobRunner(
        router, backend.store, events, worker_id="w1", budgets=budgets, simulated=frozenset(catalog)
    )
    assert await runner.run(job_id, run=1) == "failed"

    job = await client.get(job_id)
    assert job.failure is not None
    assert job.failure.code is FailureCode.STREAM_INTERRUPTED
    (row,) = await backend.store.ledger.rows(job_id=job_id)
    assert row["cost_usd"] > 0
    assert (row["estimated"], row["simulated"], row["usage"]["output_tokens"]) == (True, True, 4)
    assert job.cost_usd == row["cost_usd"]
    usage = await budgets.usage(user_scope(job.tenant, job.user_id))
    assert (usage.spent_usd, usage.reserved_usd) == (math.ceil(row["cost_usd"] * 1_000_000) / 1e6, 0)
