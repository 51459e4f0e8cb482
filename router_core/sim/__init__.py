"""Simulated provider world: OpenAI- and Anthropic-compatible deployments with scripted faults.

Drive it in-process through `sim_http_client` (any SDK accepting an `httpx2.AsyncClient`), or
over the network with `serve`. No real provider is ever contacted.

Names are loaded on first use (PEP 562): the catalog needs only `SimProfile`, and must not pull in
uvicorn (the server) or httpx2 (the transport) with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router_core._lazy import lazy_exports

if TYPE_CHECKING:
    from router_core.sim.profiles import Fault, SimCounters, SimProfile
    from router_core.sim.server import create_server, serve
    from router_core.sim.transport import SimTransport, sim_http_client
    from router_core.sim.world import ConnectionDropped, SimWorld

__all__ = [
    "ConnectionDropped",
    "Fault",
    "SimCounters",
    "SimProfile",
    "SimTransport",
    "SimWorld",
    "create_server",
    "serve",
    "sim_http_client",
]

# Which module defines each public name; `__getattr__` imports it on first access.
_MODULES: dict[str, tuple[str, ...]] = {
    "router_core.sim.profiles": ("Fault", "SimCounters", "SimProfile"),
    "router_core.sim.server": ("create_server", "serve"),
    "router_core.sim.transport": ("SimTransport", "sim_http_client"),
    "router_core.sim.world": ("ConnectionDropped", "SimWorld"),
}
__getattr__, __dir__ = lazy_exports(__name__, _MODULES, globals())
