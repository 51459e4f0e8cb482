"""Redis commands of concurrent tasks sent together: one pipeline per turn of the event loop.

A worker runs hundreds of jobs at once, and each job makes a dozen small Redis calls (budget holds,
admission, releases, settles, events). Sent one by one, each call takes a connection from the pool,
writes to the socket and waits for its own reply: a large share of a job's CPU went there.

`Coalescer` queues the calls made during one turn of the event loop and sends them, at the end of
that turn, as one non-transactional pipeline; each caller gets its own reply (or its own error).
`TickBatcher` is the same rule for any batched call (the SQL store batches its cache reads with
it). Nothing waits for a batch to fill: a call made alone goes out at the end of its turn, as it
would have. Each command keeps its own atomicity (a Lua script runs whole, as before); commands of
different callers were never ordered with each other, and in a pipeline they still run in the
order they were made.

    script = BatchedScript(redis, LUA)     # like redis.register_script(LUA)
    reply = await script(keys=[...], args=[...])
    await coalescer_for(redis).execute("HDEL", key, field)

A call is queued when it is made, not when it is awaited: calls made one after the other share a
pipeline without `asyncio.gather` (whose task per call cost more than the call). Methods built on
them can keep that by being plain functions that return an awaitable (`Budgets.settle`): the queued
call's future, or a `Later` for what is left once it replies; `in_turn` awaits several such.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["BatchedScript", "Coalescer", "Later", "TickBatcher", "coalescer_for", "in_turn", "ready"]

# Most commands in one pipeline: a burst larger than this is sent as several.
_MAX_BATCH = 1_000


Item = TypeVar("Item")
Result = TypeVar("Result")
T = TypeVar("T")


class TickBatcher(Generic[Item, Result]):
    """Items submitted during one turn of the event loop, handled by one call at the end of it.

    `handle(items)` returns one reply per item, in order: a value, or an exception that is raised
    to that item's caller only. An exception `handle` raises reaches every caller of the batch.
    """

    def __init__(
        self,
        handle: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
        *,
        max_batch: int = _MAX_BATCH,
    ) -> None:
        self._handle = handle
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # calls of `handle`, for tests

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """Queue `item` for this turn's batch (at once: this is not a coroutine); await the reply."""
        # The loop of this turn's batch, if it has begun: on CPython 3.11 get_running_loop() makes
        # a getpid() system call, and a worker submits about a dozen calls a job.
        if self._pending:
            loop = self._pending[0][1].get_loop()
        else:
            loop = asyncio.get_running_loop()
            loop.call_soon(self._flush)
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max_batch):
            task = asyncio.get_running_loop().create_task(self._run(pending[start : start + self._max_batch]))
            self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    async def _run(self, pending: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        self.batches += 1
        try:
            replies = await self._handle([item for item, _ in pending])
        except BaseException as exc:  # every caller of the batch hears it
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(pending, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)


@dataclass(frozen=True, slots=True)
class _Call:
    args: tuple[Any, ...]
    script: bytes | None = None  # a script's text, for an EVALSHA the server does not know yet


class Coalescer:
    """The Redis calls of one client's concurrent callers, one pipeline per event-loop turn."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._batcher: TickBatcher[_Call, Any] = TickBatcher(self._send)

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Run one Redis command (`execute_command`'s arguments) in this turn's pipeline.

        Queued at once (this is not a coroutine): calls made one after the other without an
        `await` between them go out in that order, in the same pipeline.
        """
        return self._batcher.submit(_Call(args))

    def evalsha(
        self, sha: str, script: bytes, keys: Sequence[Any], args: Iterable[Any]
    ) -> asyncio.Future[Any]:
        """Run a Lua script by its hash, loading it when the server does not know it."""
        return self._batcher.submit(_Call(("EVALSHA", sha, len(keys), *keys, *args), script))

    async def _send(self, calls: list[_Call]) -> list[Any]:
        replies = await self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # a restarted or flushed server: load those scripts, run their calls again
            for text in {script for i in missing if (script := calls[i].script) is not None}:
                await self._redis.script_load(text)
            again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        """Send `calls` on one pooled connection and read their replies, each error in its place.

        What `pipeline(transaction=False).execute(raise_on_error=False)` does, without redis-py's
        pipeline object (a command stack, an options dict and a parse call per command: about a
        quarter of the client's CPU a command). It is retried as redis-py retries a pipeline:
        whole, on the client's retry errors, the connection dropped first.
        """
        pool = self._redis.connection_pool
        connection = await pool.get_connection()
        try:
            replies: list[Any] = await connection.retry.call_with_retry(
                lambda: self._exchange(connection, calls), lambda error: _dropped(connection, error)
            )
        finally:
            await pool.release(connection)
        return replies

    async def _exchange(self, connection: AbstractConnection, calls: list[_Call]) -> list[Any]:
        # On any error or cancellation while sending or reading, redis-py's connection disconnects
        # itself: it never goes back to the pool with replies left unread.
        await connection.send_packed_command(connection.pack_commands([call.args for call in calls]))
        callbacks = self._redis.response_callbacks
        replies: list[Any] = []
        for call in calls:
            try:
                reply = await connection.read_response()
            except ResponseError as error:
                reply = error
            else:
                if (callback := callbacks.get(call.args[0])) is not None:
                    reply = callback(reply)
                    if inspect.isawaitable(reply):
                        reply = await reply
            replies.append(reply)
        return replies


async def _dropped(connection: AbstractConnection, error: Exception) -> None:
    """A connection error on a pipeline: disconnect; go on to a retry only on the client's retry
    errors (as redis-py's `Pipeline`)."""
    await connection.disconnect()
    if connection.retry_on_error is None or not isinstance(error, tuple(connection.retry_on_error)):
        raise error


_COALESCERS: weakref.WeakKeyDictionary[Redis, Coalescer] = weakref.WeakKeyDictionary()


def coalescer_for(redis: Redis) -> Coalescer:
    """The one `Coalescer` of `redis` (a client's callers share its pipelines)."""
    coalescer = _COALESCERS.get(redis)
    if coalescer is None:
        coalescer = _COALESCERS[redis] = Coalescer(redis)
    return coalescer


class BatchedScript:
    """A Lua script called through its client's `Coalescer`: `register_script`'s object, batched."""

    def __init__(self, redis: Redis, script: str) -> None:
        self.script, self.sha = _encoded(script)
        self._coalescer = coalescer_for(redis)

    def __call__(self, keys: Sequence[Any] = (), args: Iterable[Any] = ()) -> asyncio.Future[Any]:
        return self._coalescer.evalsha(self.sha, self.script, keys, args)


@functools.cache
def _encoded(script: str) -> tuple[bytes, str]:
    """A script's bytes and SHA-1, made once per text (a worker makes a `JobEnder` per job)."""
    encoded = script.encode()
    return encoded, hashlib.sha1(encoded).hexdigest()


async def in_turn(calls: Iterable[Awaitable[T]]) -> list[T]:
    """The results of `calls`, awaited one after the other; the first error is raised once every
    call has ended (as `asyncio.gather` would, but with no task per call).

    For awaitables that queued their Redis calls when they were made (see the module docstring):
    made together, they share this turn's pipeline even though they are awaited in turn. A call not
    awaited because the caller was cancelled is closed, so no coroutine is left never awaited.
    """
    pending = list(calls)
    results: list[T] = []
    error: Exception | None = None
    try:
        while pending:
            call = pending.pop(0)
            try:
                results.append(await call)
            except Exception as exc:
                error = error or exc
    finally:
        for call in pending:
            if inspect.iscoroutine(call):
                call.close()
    if error is not None:
        raise error
    return results


class Later(Generic[T]):
    """What is left to do once queued calls reply, made into a coroutine only when awaited.

    A function that queues its calls and returns `Later(lambda: finish(replies))` gives its caller
    an awaitable that, never awaited (the caller was cancelled first), leaves no coroutine behind
    unawaited, which a coroutine made up front would (and every coroutine it held).
    """

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[], Awaitable[T]]) -> None:
        self._make = make

    def __await__(self) -> Generator[Any, None, T]:
        return self._make().__await__()


def ready(value: T) -> Later[T]:
    """`value` as an awaitable: what a function returning a queued call's awaitable returns when it
    has nothing to send."""
    return Later(functools.partial(_value, value))


async def _value(value: T) -> T:
    return value
