"""A worker's transactions sent with its other Redis calls: one Lua call in the Coalescer's pipeline.

arq starts every job with a transaction of its own: `MULTI`, `GET` the payload, `INCR` and
`EXPIRE` the try counter, `EXEC` (`Worker.run_job`), and ends a failed one with another. Each took
a connection from the pool, checked it, and parsed five replies: about 7% of a worker's CPU in a
py-spy profile of `bench/vs_litellm.py`, while the rest of a job's Redis calls share one pipeline
per event-loop turn (`storage.bus.coalesce`).

`CoalescingRedis` is the worker's client: its `pipeline(transaction=True)` gives a
`CoalescedTransaction`, a redis-py pipeline whose queued commands, when `execute()` comes, run as
one Lua script through the client's `Coalescer`. A script runs whole, as `MULTI`/`EXEC` does;
each command is run with `redis.pcall`, so an error stays that command's reply and the others
run, as in `EXEC`; the replies go through redis-py's response callbacks as its transactions'
do, so callers see the same values. A pipeline that `WATCH`es, calls `multi()`, holds a command
outside `TRANSACTABLE` or a script is executed by redis-py as before.
"""

from __future__ import annotations

import inspect
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.client import Pipeline
from redis.client import EMPTY_RESPONSE
from redis.exceptions import ResponseError

from storage.bus.coalesce import BatchedScript
from storage.connections import pack_with_hiredis

__all__ = ["TRANSACTABLE", "CoalescedTransaction", "CoalescingRedis", "worker_client"]

# ARGV: for each command, its number of words, then the words. Replies in order, errors in place.
_TRANSACTION = """
local unpack = unpack or table.unpack
local replies, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  replies[#replies + 1] = redis.pcall(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return replies
"""

# The commands a coalesced transaction runs (those of arq's and routeq's transactions); any other
# leaves the pipeline to redis-py. Each may run in a script and replies as it does outside one.
TRANSACTABLE = frozenset(
    {"GET", "SET", "SETEX", "PSETEX", "DEL", "EXISTS", "INCR", "INCRBY", "EXPIRE", "PEXPIRE"}
    | {"ZADD", "ZREM", "ZSCORE", "ZCARD", "HGET", "HSET", "HDEL", "HMGET", "HGETALL", "HINCRBY"}
)


class CoalescedTransaction(Pipeline):
    """`Pipeline(transaction=True)` whose queued commands run as one coalesced Lua call."""

    def __init__(self, redis: CoalescingRedis) -> None:
        super().__init__(redis.connection_pool, redis.response_callbacks, True, None)
        self._script = redis.transaction_script

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = self.command_stack
        if not self._coalescible():
            return await super().execute(raise_on_error)
        words: list[Any] = []
        for args, _ in stack:
            words += [len(args), *args]
        try:
            replies: list[Any] = list(await self._script(args=words))
        finally:
            await self.reset()  # type: ignore[no-untyped-call]
        if raise_on_error:
            self.raise_first_error(stack, replies)
        pairs = zip(replies, stack, strict=True)
        return [await self._parsed(reply, args, dict(options)) for reply, (args, options) in pairs]

    def _coalescible(self) -> bool:
        if not self.command_stack or self.watching or self.explicit_transaction or self.scripts:
            return False
        return all(
            _name(args[0]) in TRANSACTABLE and EMPTY_RESPONSE not in options
            for args, options in self.command_stack
        )

    async def _parsed(self, reply: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """`reply` through redis-py's response callback for its command, as a transaction's."""
        if isinstance(reply, ResponseError):
            return reply
        options.pop("keys", None)
        callback = self.response_callbacks.get(args[0])
        if callback is None:
            return reply
        parsed = callback(reply, **options)
        return await parsed if inspect.isawaitable(parsed) else parsed


def _name(command: str | bytes) -> str:
    return (command.decode() if isinstance(command, bytes) else command).upper()


class CoalescingRedis(ArqRedis):
    """An `ArqRedis` whose transactions go out with its other calls (`CoalescedTransaction`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transaction_script = BatchedScript(self, _TRANSACTION)

    @classmethod
    def sharing(cls, redis: ArqRedis) -> CoalescingRedis:
        """A client on `redis`'s connection pool and queue settings (closing either closes the pool)."""
        if isinstance(redis, CoalescingRedis):
            return redis
        return cls(
            redis.connection_pool,
            job_serializer=redis.job_serializer,
            job_deserializer=redis.job_deserializer,
            default_queue_name=redis.default_queue_name,
            expires_extra_ms=redis.expires_extra_ms,
        )

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        if transaction and shard_hint is None:
            return CoalescedTransaction(self)
        return super().pipeline(transaction, shard_hint)


async def worker_client(
    redis: ArqRedis | None, settings: RedisSettings | None = None, **pool: Any
) -> CoalescingRedis:
    """The client a worker runs on: `redis`'s pool, or (None) one made by arq's `create_pool(settings,
    **pool)` as arq's `Worker.main` would; packing with hiredis, its transactions coalesced."""
    if redis is None:
        redis = await create_pool(settings, **pool)
    await pack_with_hiredis(redis)
    return CoalescingRedis.sharing(redis)
