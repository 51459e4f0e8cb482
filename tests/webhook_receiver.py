"""A webhook receiver for tests: a real HTTP/1.1 server on 127.0.0.1, answering from a script.

Each request is recorded (headers, body) and answered with the script's next (status, headers), then
the last one for good; the connection is closed after each answer. A status of 0 never answers (the
connection stays open until the receiver closes): the sender's timeout has to end the attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["Received", "Receiver"]


@dataclass(frozen=True)
class Received:
    """One request as the receiver read it."""

    path: str
    headers: dict[str, str]
    body: str


@dataclass
class Receiver:
    """`async with Receiver([500, 200]) as hook:` then send to `hook.url`; `hook.received` lists requests."""

    script: Sequence[int | tuple[int, dict[str, str]]] = (200,)
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks/routeq"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._closing.set()
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in head[1:] if line)
            }
            body = (await reader.readexactly(int(headers.get("content-length", "0")))).decode()
            self.received.append(Received(path, headers, body))
            step = self.script[min(len(self.received), len(self.script)) - 1]
            status, extra = step if isinstance(step, tuple) else (step, {})
            if status == 0:
                await self._closing.wait()
                return
            answer = f'{{"answer": {status}}}'
            lines = [f"HTTP/1.1 {status} Scripted", f"Content-Length: {len(answer)}", "Connection: close"]
            lines += [f"{name}: {value}" for name, value in extra.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n" + answer).encode())
            await writer.drain()
        finally:
            writer.close()
