"""A deployment's HTTP connections spread over several small pools.

httpcore's connection pool walks every connection it holds on each request and again on each
response it closes, asking each whether it has expired (a socket check, `getpeername` and a
readability poll). With a worker's hundreds of calls to one deployment open at once, that walk was
O(connections) per call: over loopback it was half of the SDK call's CPU at 200 calls in flight,
and it grows with the calls in flight.

`ShardedTransport` keeps the same total of connections as several `AsyncHTTPTransport`s of at most
`shard_size` connections each, and sends each request to the first pool with room (the pools fill
in order, so a quiet deployment keeps using one pool and its few warm connections). Each walk then
covers one small pool.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence

import httpx2

__all__ = ["ShardedTransport", "sharded_transport"]

# Connections per pool: small enough that a pool's walk stays cheap, large enough for a few warm
# connections per pool.
SHARD_SIZE = 8


class _Counted(httpx2.AsyncByteStream):
    """A response's body stream that tells its pool's counter when the response is closed."""

    def __init__(self, stream: httpx2.AsyncByteStream, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._done is not None:
                self._done()
                self._done = None


class ShardedTransport(httpx2.AsyncBaseTransport):
    """Requests to one deployment spread over `shards`, each taking at most `shard_size` at once
    before the next one is used (when every shard is full, the least busy one queues it)."""

    def __init__(self, shards: Sequence[httpx2.AsyncBaseTransport], *, shard_size: int) -> None:
        if not shards:
            raise ValueError("a sharded transport needs at least one shard")
        self.shards = list(shards)
        self.shard_size = shard_size
        self.open = [0] * len(self.shards)  # requests whose response is not closed yet, per shard

    def _pick(self) -> int:
        for n, count in enumerate(self.open):
            if count < self.shard_size:
                return n
        return min(range(len(self.open)), key=self.open.__getitem__)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        n = self._pick()
        self.open[n] += 1

        def done() -> None:
            self.open[n] -= 1

        try:
            response = await self.shards[n].handle_async_request(request)
        except BaseException:
            done()
            raise
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _Counted(response.stream, done)
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


def sharded_transport(limits: httpx2.Limits, *, shard_size: int = SHARD_SIZE) -> ShardedTransport:
    """`limits.max_connections` as pools of at most `shard_size` connections.

    Each pool keeps all its connections alive between calls (until `keepalive_expiry`): pools fill
    in order, so a pool in use is a pool whose connections are wanted again; a cap on the idle ones
    per pool would close and reopen connections under a steady load.
    """
    total = limits.max_connections or shard_size
    per_pool = httpx2.Limits(
        max_connections=shard_size,
        max_keepalive_connections=shard_size,
        keepalive_expiry=limits.keepalive_expiry,
    )
    tls = httpx2.create_ssl_context()  # one for every pool: each would load the CA bundle (~1 s here)
    count = max(1, math.ceil(total / shard_size))
    shards = [httpx2.AsyncHTTPTransport(verify=tls, limits=per_pool) for _ in range(count)]
    return ShardedTransport(shards, shard_size=shard_size)
