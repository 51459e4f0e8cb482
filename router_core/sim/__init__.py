"""Simulated provider world: OpenAI- and Anthropic-compatible deployments with scripted faults.

Drive it in-process through `sim_http_client` (any SDK accepting an `httpx2.AsyncClient`), or
over the network with `serve`. No real provider is ever contacted.

Names are loaded on first use (PEP 562): the catalog needs only `SimProfile`, and must not pull in
uvicorn (the server) or httpx2 (the transport) with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

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
_SOURCE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _SOURCE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
