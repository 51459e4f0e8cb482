"""Fixtures of the sim tests: a fake clock, and SDK clients wired to an in-process world."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx2
import openai
import pytest

from router_core.clock import FakeClock
from router_core.sim import SimWorld, sim_http_client
from tests.sim.helpers import AnthropicFactory, OpenAIFactory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def http_clients() -> AsyncIterator[list[httpx2.AsyncClient]]:
    clients: list[httpx2.AsyncClient] = []
    yield clients
    for client in clients:
        await client.aclose()


@pytest.fixture
def oai(http_clients: list[httpx2.AsyncClient]) -> OpenAIFactory:
    def make(world: SimWorld, deployment: str = "dep-a") -> openai.AsyncOpenAI:
        http = sim_http_client(world)
        http_clients.append(http)
        base_url = f"http://sim.routeq.invalid/{deployment}/v1"
        return openai.AsyncOpenAI(api_key="sim", base_url=base_url, http_client=http, max_retries=0)

    return make


@pytest.fixture
def claude(http_clients: list[httpx2.AsyncClient]) -> AnthropicFactory:
    def make(world: SimWorld, deployment: str = "dep-b") -> anthropic.AsyncAnthropic:
        http = sim_http_client(world)
        http_clients.append(http)
        base_url = f"http://sim.routeq.invalid/{deployment}"
        return anthropic.AsyncAnthropic(api_key="sim", base_url=base_url, http_client=http, max_retries=0)

    return make
