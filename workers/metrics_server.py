"""A worker's own metrics port: the smallest HTTP/1.1 server that answers Prometheus scrapes.

    GET /metrics   refresh the gauges from Redis, then the registry in the text format (200)
    GET /other     404          POST /metrics   405          garbage   400

One request per connection (`Connection: close`), so there is no keep-alive state to get wrong.
A bad or slow client only loses its own connection; a Redis outage during a scrape is logged and
the counters are served with the gauges' last values, so Prometheus keeps the worker's counts.

A worker runs its HTTP server here rather than pulling in a web framework (the API's lives in
`producer/`, which workers may not import) or prometheus_client's threaded server (a thread per
process, and the gauges must be read from Redis on the event loop anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import NamedTuple

from redis.exceptions import RedisError

from storage.metrics import CONTENT_TYPE, Metrics

__all__ = ["MetricsServer", "serve_worker_metrics"]

logger = logging.getLogger("routeq.worker")

_MAX_HEADER_LINES = 100
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}
_TEXT = "text/plain; charset=utf-8"


class _Response(NamedTuple):
    status: int
    body: bytes
    content_type: str = _TEXT
    headers: str = ""  # extra header lines, each ending in CRLF


class MetricsServer:
    """Serves `metrics` at `GET /metrics` on `host:port` between `start()` and `close()`.

    Args:
        metrics: the registry to render.
        refresh: awaited before each render (reads the Redis-backed gauges); None renders as is.
        host: address to bind; the default is every IPv4 interface (Prometheus scrapes from afar).
        port: port to bind; 0 picks a free one (see `port` once started).
        read_timeout_s: a client must send its request head within this, or is disconnected.
    """

    def __init__(
        self,
        metrics: Metrics,
        refresh: Callable[[], Awaitable[None]] | None = None,
        *,
        host: str = "0.0.0.0",  # every interface: a metrics port is scraped from other machines
        port: int = 9101,
        read_timeout_s: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.refresh = refresh
        self.host = host
        self.read_timeout_s = read_timeout_s
        self._port = port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[object]] = set()

    @property
    def port(self) -> int:
        """The bound port (the one picked when started with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """Where to scrape, e.g. http://0.0.0.0:9101/metrics."""
        return f"http://{self.host}:{self._port}/metrics"

    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises:
            OSError: the port is taken (or not ours to bind).
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop connections still open; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    request = await _read_request(reader)
            except (TimeoutError, ConnectionError):
                return  # a slow or vanished client: nobody to answer
            except ValueError:  # a line longer than the reader's limit
                request = None
            await _write(writer, await self._respond(request))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if task is not None:
                self._clients.discard(task)

    async def _respond(self, request: tuple[str, str] | None) -> _Response:
        if request is None:
            return _Response(400, b"bad request\n")
        method, path = request
        if path.split("?", 1)[0] != "/metrics":
            return _Response(404, b"not found; metrics are at /metrics\n")
        if method != "GET":
            return _Response(405, b"only GET /metrics\n", headers="Allow: GET\r\n")
        if self.refresh is not None:
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                logger.warning("metrics scrape: Redis unavailable (%s); gauges keep their last values", exc)
            except Exception:  # a bug must not take the endpoint down; it is logged with its traceback
                logger.exception("metrics scrape: refreshing the gauges failed")
                return _Response(500, b"refreshing the metrics failed; see the worker's log\n")
        return _Response(200, self.metrics.render(), CONTENT_TYPE)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """(method, target) of the request line, after reading the headers; None if malformed."""
    line = await reader.readline()
    parts = line.decode("latin-1").split()
    for _ in range(_MAX_HEADER_LINES):  # read the head so that closing does not reset the connection
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    return parts[0], parts[1]


async def _write(writer: asyncio.StreamWriter, response: _Response) -> None:
    head = (
        f"HTTP/1.1 {response.status} {_REASONS[response.status]}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"{response.headers}"
        "Connection: close\r\n"
        "\r\n"
    )
    with contextlib.suppress(ConnectionError):
        writer.write(head.encode("latin-1") + response.body)
        await writer.drain()


async def serve_worker_metrics(
    metrics: Metrics, refresh: Callable[[], Awaitable[None]] | None, port: int
) -> MetricsServer | None:
    """Start a worker's metrics port; if it cannot be bound, warn and return None (the worker runs on)."""
    server = MetricsServer(metrics, refresh, port=port)
    try:
        await server.start()
    except OSError as exc:
        logger.warning(
            "worker metrics port %d unavailable (%s): this worker serves no metrics. Set "
            "ROUTEQ_WORKER_METRICS_PORT (worker_metrics_port) to a free port, 0 for any free port, or "
            "empty to turn the endpoint off.",
            port,
            exc.strerror or exc,
        )
        return None
    logger.info("worker metrics at %s", server.url)
    return server
