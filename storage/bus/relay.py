"""Streamed completions: the worker relays text pieces through Redis to the API that asked for them.

A job created with `stream=true` (`POST /v1/chat/completions` with `"stream": true`) is routed with
`Router.stream`; every text piece is appended to the job's stream `routeq:chunks:<job_id>` as it
arrives, tagged with the run that produced it. After the job's outcome is committed and its event
published, the worker appends an `end` entry; the API then reads the outcome (usage, cost,
deployment) from SQL for the final chunk.

    {run, text}     one piece of the answer's text (its first choice)
    {run, delta}    anything else streamed: an OpenAI chunk choice as JSON (tool-call pieces, ...)
    {run, end}      the job is finished (end = its status); nothing follows

A worker that dies mid-stream leaves pieces of run N; the re-run appends pieces of run N+1. A reader
that already passed run N's text on cannot take it back: it reports the stream as interrupted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from itertools import chain
from typing import Any

from redis.asyncio import Redis

from storage import keys
from storage.bus.coalesce import BatchedScript, coalescer_for
from storage.bus.notifier import Notifier, Signal
from storage.connections import as_text

__all__ = ["Piece", "PieceWriter", "StreamRelay"]

# A reader waits at most this long on one XREAD, so it notices a client that went away.
_BLOCK_MS = 5_000

# KEYS: the job's chunk stream, its "piece added" channel. ARGV: retention (s), then the entry's
# fields and values. One call where XADD + EXPIRE + PUBLISH were a pipeline of their own.
_APPEND = """
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], '')
return id
"""


@dataclass(frozen=True, slots=True)
class Piece:
    """One entry of a job's chunk stream."""

    id: str
    run: int
    text: str | None = None  # a piece of the answer
    end: str | None = None  # the job's final status: the last entry
    delta: dict[str, Any] | None = None  # an OpenAI chunk choice that is not plain text


class StreamRelay:
    """Appends and reads a job's streamed pieces."""

    def __init__(self, redis: Redis, *, retention_s: int = 3600, notifier: Notifier | None = None) -> None:
        self._redis = redis
        self._retention_s = retention_s
        # With a notifier, readers wait for its pings instead of holding a connection in XREAD BLOCK.
        self._notifier = notifier
        # Appends and non-blocking reads go in the turn's pipeline with the process's other calls.
        self._append_script = BatchedScript(redis, _APPEND)
        self._batch = coalescer_for(redis)

    async def push(self, job_id: str, run: int, text: str | dict[str, Any]) -> None:
        """Append a piece of run `run`'s answer: text, or a chunk choice (`delta`)."""
        if isinstance(text, str):
            await self._append(job_id, {"run": str(run), "text": text})
        else:
            await self._append(job_id, {"run": str(run), "delta": json.dumps(text, separators=(",", ":"))})

    def writer(self, job_id: str, run: int) -> PieceWriter:
        """A writer that coalesces pieces arriving while the previous append is in flight."""
        return PieceWriter(self, job_id, run)

    async def end(self, job_id: str, run: int, status: str) -> None:
        """Mark the job finished (after its outcome is committed): readers stop here."""
        await self._append(job_id, {"run": str(run), "end": status})

    async def _append(self, job_id: str, fields: dict[str, str]) -> None:
        script_keys = [keys.job_chunks(job_id), keys.job_chunks_added(job_id)]
        await self._append_script(keys=script_keys, args=[self._retention_s, *chain(*fields.items())])

    async def follow(self, job_id: str, *, after: str = "0-0") -> AsyncGenerator[Piece, None]:
        """The job's pieces from stream id `after`, live, up to and including its `end` entry."""
        key = keys.job_chunks(job_id)
        # With a notifier the reader registers before each read (a piece appended after the read
        # pings it) and reads without blocking; without one, XREAD BLOCK waits on a connection.
        watching: AbstractAsyncContextManager[Signal | None] = (
            nullcontext() if self._notifier is None else self._notifier.watch(keys.job_chunks_added(job_id))
        )
        async with watching as added:
            block = _BLOCK_MS if added is None else None
            while True:
                if block is None:
                    reply = await self._batch.execute("XREAD", "COUNT", 500, "STREAMS", key, after)
                else:
                    reply = await self._redis.xread({key: after}, count=500, block=block)
                for _stream, entries in reply or ():
                    for entry_id, fields in entries:
                        after = as_text(entry_id)
                        piece = _piece(after, fields)
                        yield piece
                        if piece.end is not None:
                            return
                if not reply and added is not None:
                    await added.wait()


class PieceWriter:
    """Appends one run's pieces in order, one Redis round trip at a time, never waiting on the caller.

    A provider can stream faster than one XADD per piece: pieces that arrive while an append is in
    flight are joined into the next one. No piece waits for more than that one round trip.
    """

    def __init__(self, relay: StreamRelay, job_id: str, run: int) -> None:
        self._relay = relay
        self._job_id = job_id
        self._run = run
        self._pending: list[str | dict[str, Any]] = []
        self._flushing: asyncio.Task[None] | None = None

    def add(self, text: str | dict[str, Any]) -> None:
        """Queue a piece (text, or a chunk choice); it is sent with the next append."""
        self._pending.append(text)
        if self._flushing is None or self._flushing.done():
            if self._flushing is not None:
                self._flushing.result()  # an append that failed fails the stream here
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            # Text pieces in a row become one entry; a chunk choice is an entry of its own.
            texts = 0
            while texts < len(self._pending) and isinstance(self._pending[texts], str):
                texts += 1
            if texts:
                piece: str | dict[str, Any] = "".join(self._pending[:texts])  # type: ignore[arg-type]
                del self._pending[:texts]
            else:
                piece = self._pending.pop(0)
            await self._relay.push(self._job_id, self._run, piece)

    async def close(self) -> None:
        """Wait until every queued piece is appended (and raise if an append failed)."""
        if self._flushing is not None:
            await self._flushing
        if self._pending:
            await self._flush()

    async def abort(self) -> None:
        """Stop appending (the run failed or was cancelled); pieces not yet sent are dropped."""
        self._pending.clear()
        if self._flushing is not None and not self._flushing.done():
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)


def _piece(entry_id: str, fields: dict[bytes | str, bytes | str]) -> Piece:
    values = {as_text(k): as_text(v) for k, v in fields.items()}
    delta = values.get("delta")
    return Piece(
        entry_id,
        int(values.get("run", "0")),
        values.get("text"),
        values.get("end"),
        None if delta is None else json.loads(delta),
    )
