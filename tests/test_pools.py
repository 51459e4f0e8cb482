"""A deployment's HTTP connections in small pools (router_core/providers/pools.py): requests fill the
pools in order, a closed response frees its place, and the SDK works through it unchanged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx2

from router_core.providers.pools import ShardedTransport, sharded_transport


class _Body(httpx2.AsyncByteStream):
    """A body read from the network, as a real transport's is (not loaded ahead)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"ok": true}'


class _Held:
    """A shard that answers once `release` is set; counts what it served."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.served = 0

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        await self.release.wait()
        self.served += 1
        return httpx2.Response(200, headers={"content-type": "application/json"}, stream=_Body())


async def test_requests_fill_the_pools_in_order_and_closed_responses_free_their_place() -> None:
    release = asyncio.Event()
    held = [_Held(release) for _ in range(3)]
    transport = ShardedTransport([httpx2.MockTransport(h.handle) for h in held], shard_size=2)
    async with httpx2.AsyncClient(transport=transport, base_url="http://sim") as client:
        calls = [asyncio.create_task(client.get("/x")) for _ in range(5)]
        async with asyncio.timeout(5):
            while sum(transport.open) < 5:  # noqa: ASYNC110 - the transport's own counters
                await asyncio.sleep(0)
        assert transport.open == [2, 2, 1]  # the first pools fill before the next is used
        release.set()
        responses = await asyncio.gather(*calls)
        assert [r.json() for r in responses] == [{"ok": True}] * 5
        assert transport.open == [0, 0, 0]  # each read response closed its place
        assert [h.served for h in held] == [2, 2, 1]

        # Alone again, a request goes to the first pool: its warm connections are used first.
        await client.get("/y")
        assert [h.served for h in held] == [3, 2, 1]


async def test_every_pool_full_queues_on_the_least_busy() -> None:
    release = asyncio.Event()
    held = [_Held(release) for _ in range(2)]
    transport = ShardedTransport([httpx2.MockTransport(h.handle) for h in held], shard_size=1)
    async with httpx2.AsyncClient(transport=transport, base_url="http://sim") as client:
        calls = [asyncio.create_task(client.get("/x")) for _ in range(5)]
        async with asyncio.timeout(5):
            while sum(transport.open) < 5:  # noqa: ASYNC110 - the transport's own counters
                await asyncio.sleep(0)
        assert sorted(transport.open) == [2, 3]
        release.set()
        await asyncio.gather(*calls)
    assert transport.open == [0, 0]


async def test_a_failed_request_frees_its_place() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    transport = ShardedTransport([httpx2.MockTransport(refuse)], shard_size=4)
    async with httpx2.AsyncClient(transport=transport, base_url="http://sim") as client:
        for _ in range(3):
            with contextlib.suppress(httpx2.ConnectError):
                await client.get("/x")
    assert transport.open == [0]


def test_the_limits_become_pools_of_the_shard_size_sharing_one_tls_context() -> None:
    transport = sharded_transport(httpx2.Limits(max_connections=100), shard_size=8)
    assert len(transport.shards) == 13  # 100 connections in pools of at most 8
    assert transport.shard_size == 8
