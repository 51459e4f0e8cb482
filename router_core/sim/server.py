"""Run a `SimWorld` as a real HTTP server (uvicorn), for multi-process runs and benchmarks."""

from __future__ import annotations

import logging

import uvicorn

from router_core.sim.world import ConnectionDropped, SimWorld

__all__ = ["create_server", "serve"]


class _HideSimulatedDrops(logging.Filter):
    """Drop uvicorn's "Exception in ASGI application" records caused by simulated drops.

    Aborting the connection requires raising from the app, which uvicorn logs with a traceback;
    at a drop rate of a few percent that would bury every real error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


def create_server(world: SimWorld, *, host: str = "127.0.0.1", port: int = 8900) -> uvicorn.Server:
    """Build (without starting) a uvicorn server for `world`, with drops aborting connections.

    Use it instead of `serve` to control the lifecycle: poll `server.started`, and set
    `server.should_exit = True` to stop it.

    Args:
        world: The world to serve; its `drop_mode` is switched to "abort".
        host: Interface to bind.
        port: TCP port to bind.

    Returns:
        The configured server; run it with `await server.serve()`.
    """
    world.drop_mode = "abort"
    config = uvicorn.Config(world, host=host, port=port, log_level="warning", lifespan="off")
    error_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideSimulatedDrops) for f in error_logger.filters):
        error_logger.addFilter(_HideSimulatedDrops())
    return uvicorn.Server(config)


async def serve(world: SimWorld, *, host: str = "127.0.0.1", port: int = 8900) -> None:
    """Serve `world` over HTTP until the process is interrupted.

    Args:
        world: The world to serve; its `drop_mode` is switched to "abort" so `drop` faults cut
            the TCP connection mid-response.
        host: Interface to bind.
        port: TCP port to bind.
    """
    await create_server(world, host=host, port=port).serve()
