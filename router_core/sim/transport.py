"""In-process HTTP transport to a `SimWorld`: the SDKs talk to the sim without opening a socket."""

from __future__ import annotations

import httpx2

from router_core.providers.http import AsyncClient
from router_core.sim.world import ConnectionDropped, SimWorld

__all__ = ["SIM_BASE_URL", "SimTransport", "sim_http_client"]

SIM_BASE_URL = "http://sim.routeq.invalid"
"""Base URL of in-process clients; `.invalid` guarantees a misrouted request never resolves."""


class SimTransport(httpx2.AsyncBaseTransport):
    """`httpx2.ASGITransport` to a `SimWorld` that turns simulated drops into real-looking ones.

    The ASGI transport would surface `ConnectionDropped` as an arbitrary exception; a real dropped
    socket gives `httpx2.RemoteProtocolError`, which the SDKs map to their connection error.
    Responses are buffered whole, so streamed answers arrive in one piece (same events, no pacing).
    """

    def __init__(self, world: SimWorld) -> None:
        """Wrap `world`.

        Args:
            world: The simulated provider world to send requests to.
        """
        self.world = world
        self._inner = httpx2.ASGITransport(app=world)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send `request` to the world.

        Raises:
            httpx2.RemoteProtocolError: When the world drops the connection.
        """
        try:
            return await self._inner.handle_async_request(request)
        except ConnectionDropped as exc:
            raise httpx2.RemoteProtocolError(
                "Server disconnected without sending a complete response.", request=request
            ) from exc

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._inner.aclose()


def sim_http_client(world: SimWorld, *, timeout: float | None = None) -> httpx2.AsyncClient:
    """An `httpx2.AsyncClient` wired to `world`, suitable as the SDKs' `http_client`.

    Args:
        world: The simulated provider world.
        timeout: httpx2 timeout; None disables it (the in-process transport enforces none anyway,
            so hang faults are bounded by the world's clock or the caller's own deadline).

    Returns:
        A client with `base_url` `http://sim.routeq.invalid`.
    """
    return AsyncClient(transport=SimTransport(world), base_url=SIM_BASE_URL, timeout=timeout)
