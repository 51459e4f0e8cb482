"""A TCP proxy on 127.0.0.1 that a test can pause: a database stall without touching the database.

While paused it forwards no byte in either direction but keeps every connection open (and accepts
new ones), as a PostgreSQL server stuck on a lock or a disk does; on resume the bytes flow again.
The shared PostgreSQL server itself is never stopped or paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["PausableProxy"]

_CHUNK = 65_536


class PausableProxy:
    """Forwards 127.0.0.1:<port> to `target`; `pause()` stalls every connection, `resume()` frees it.

    It runs its own event loop in a thread, so it keeps forwarding while the test's loop is
    blocked (stopping worker processes waits synchronously, and they need their database to
    shut down). Use as a context manager: `with PausableProxy(host, port) as proxy: ...`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-proxy", daemon=True)
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0

    def __enter__(self) -> PausableProxy:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def pause(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    async def _start(self) -> int:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _close(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        for reader, writer in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            task = asyncio.create_task(self._pump(reader, writer))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(ConnectionError, OSError):  # one side went away: close the other
                while data := await reader.read(_CHUNK):
                    await self._flowing.wait()  # paused: hold the bytes, keep the connection
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
