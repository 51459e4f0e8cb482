"""Redis connections: a real server from `ROUTEQ_REDIS_URL`, or the embedded in-process one.

Both are `arq.connections.ArqRedis`, configured with routeq's JSON job serializer, so producer and
workers speak the same queue format. Real connections retry on connection errors and timeouts, so
a worker survives a Redis restart instead of its main task dying (see docs/arq.md). A client's or the
API's pool is bounded (`ROUTEQ_REDIS_MAX_CONNECTIONS`): a command waits for a free connection.
"""

from __future__ import annotations

from typing import Any

import hiredis
from arq.connections import ArqRedis, RedisSettings, create_pool
from fakeredis import FakeAsyncRedis, FakeServer
from redis._parsers import _AsyncHiredisParser
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from storage.bus.queue import deserialize, serialize
from storage.errors import ServiceUnavailableError
from storage.settings import Settings

__all__ = ["as_text", "connect_redis", "embedded_redis", "pack_with_hiredis", "redis_settings"]

_HINT = (
    "Start Redis or fix ROUTEQ_REDIS_URL (redis://[:password@]host:port/db); "
    "leave it unset to run embedded with `routeq run`."
)


def redis_settings(url: str, *, conn_retries: int = 5) -> RedisSettings:
    """arq `RedisSettings` for `url`, with retries so commands survive a brief outage."""
    try:
        settings = RedisSettings.from_dsn(url)
    except (RuntimeError, ValueError) as exc:
        raise ServiceUnavailableError("Redis", url, f"not a Redis URL ({exc})", _HINT) from exc
    settings.conn_retries = conn_retries
    settings.conn_retry_delay = 1
    settings.conn_timeout = 2
    settings.retry_on_timeout = True
    settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionResetError]
    settings.retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=8)
    return settings


async def connect_redis(settings: Settings, *, conn_retries: int = 0) -> ArqRedis:
    """Connect to `settings.redis_url` and check it answers.

    Raises:
        ServiceUnavailableError: Redis cannot be reached; the message names the URL, password masked.
        ValueError: no Redis URL is set (use `embedded_redis` for the in-process one).
    """
    if settings.redis_url is None:
        raise ValueError("ROUTEQ_REDIS_URL is not set; use embedded_redis() for an in-process Redis")
    url = settings.redis_url
    try:
        redis = await create_pool(
            redis_settings(url, conn_retries=conn_retries),
            job_serializer=serialize,
            job_deserializer=deserialize,
            default_queue_name=settings.queue_name,
        )
    except (TimeoutError, RedisError, OSError) as exc:
        raise ServiceUnavailableError("Redis", url, exc, _HINT) from exc
    await _bound(redis, settings.redis_max_connections, settings.redis_pool_timeout_s)
    return redis


async def _bound(redis: ArqRedis, max_connections: int, timeout_s: int) -> None:
    """Give `redis` a pool of at most `max_connections`, where a command waits for a free one.

    arq builds redis-py's default pool, which has no bound (or, given one, fails a command that finds
    every connection busy); a process with hundreds of requests in flight would open hundreds.
    """
    unbounded = redis.connection_pool
    redis.connection_pool = BlockingConnectionPool(
        connection_class=_PACKED.get(unbounded.connection_class, unbounded.connection_class),
        max_connections=max_connections,
        timeout=timeout_s,
        **unbounded.connection_kwargs,
    )
    await unbounded.disconnect()  # the one connection arq's ping opened


class _HiredisPacking(AbstractConnection):
    """Commands packed by hiredis in C, as redis-py's own synchronous client does; and a cheaper
    check of a connection a pool lends (`can_read_destructive`).

    redis-py's asyncio connection packs each command in Python, joining the growing buffer again
    for every argument: a script call with twenty keys and arguments cost about 35 us there against
    3 us here, and a worker sends about twenty commands a job. The bytes are the same
    (tests/test_connections.py); a value neither text, bytes nor a number is redis-py's DataError.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # a command name such as "SCRIPT LOAD" is sent as two words
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(f"{exc} (a Redis command argument of type {_odd_type(args)})") from exc

    async def can_read_destructive(self) -> bool:
        """Whether the connection holds data no command asked for, so a pool must not lend it: a
        whole reply in the parser or bytes the event loop has taken off the socket (the test
        redis-py's own `_socket_is_empty` makes). A connection the server closed raises, and the
        pool connects it again, as after redis-py's own check.

        redis-py's check, run each time a pool lends a connection, reads the socket under a zero
        timeout: a timer, a cancelled read and its exception, and one more event-loop turn before
        the command is sent. A reply can only be left behind by a read that did not finish, and
        redis-py closes the connection then, so this check is a safeguard, not the cure.
        """
        parser, stream = self._parser, self._reader
        if not isinstance(parser, _AsyncHiredisParser) or stream is None:
            return bool(await super().can_read_destructive())  # type: ignore[no-untyped-call]
        replies = parser._reader
        if replies is None or not parser._connected:
            raise RedisConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
        if replies.gets() is not NOT_ENOUGH_DATA or stream._buffer:
            return True
        if stream.at_eof():
            raise RedisConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
        return False


def _odd_type(args: tuple[Any, ...]) -> str:
    """The type name of the first argument hiredis cannot pack."""
    odd = (arg for arg in args if isinstance(arg, bool) or not isinstance(arg, str | bytes | int | float))
    return type(next(odd, None)).__name__


class _PackedConnection(_HiredisPacking, Connection):
    """A TCP connection packing with hiredis."""


class _PackedSSLConnection(_HiredisPacking, SSLConnection):
    """A TLS connection (rediss://) packing with hiredis."""


class _PackedUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    """A Unix socket connection packing with hiredis."""


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _PackedConnection,
    SSLConnection: _PackedSSLConnection,
    UnixDomainSocketConnection: _PackedUnixConnection,
}


async def pack_with_hiredis(redis: Redis) -> None:
    """Make `redis`'s pool open connections that pack with hiredis, when it opens redis-py's own
    (arq's `create_pool`, which a worker given a Redis URL uses); its idle connections are closed.
    Call it while no command is in flight. `connect_redis`'s pools pack with hiredis already.
    """
    pool = redis.connection_pool
    packed = _PACKED.get(pool.connection_class)
    if packed is not None:
        await pool.disconnect()
        pool.reset()  # type: ignore[no-untyped-call]  # opened ones would pack in Python when used again
        pool.connection_class = packed


def embedded_redis(settings: Settings, server: FakeServer | None = None) -> ArqRedis:
    """An in-process Redis (fakeredis with Lua) for `routeq run` and fast tests.

    Every client made from the same `server` sees the same data; state ends with the process.
    """
    fake = FakeAsyncRedis(server=server or FakeServer())
    return ArqRedis(
        fake.connection_pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
    )


def as_text(value: bytes | str | int) -> str:
    """A Redis reply value as text (replies are bytes unless the client decodes them)."""
    return value.decode() if isinstance(value, bytes) else str(value)
