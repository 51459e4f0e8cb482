"""Simulated provider world: OpenAI- and Anthropic-compatible deployments with scripted faults.

Drive it in-process through `sim_http_client` (any SDK accepting an `httpx2.AsyncClient`), or
over the network with `serve`. No real provider is ever contacted.
"""

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
