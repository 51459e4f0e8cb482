"""Redis connections pack commands with hiredis (the same bytes as redis-py's own packing), and a pool
lends none holding a reply nobody read or closed by the server, checked without a loop turn."""

from __future__ import annotations

from typing import Any

import pytest
from arq.connections import create_pool
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError

from storage.connections import _PACKED, _HiredisPacking, connect_redis, pack_with_hiredis, redis_settings
from tests.backends import REDIS_ENV, pipeline_settings, service_url
from tests.fleet import until
from workers.context import WorkerContext
from workers.worker import build_worker

ARGUMENTS: dict[str, Any] = {
    "bytes": b"bytes",
    "text": "text é ✓",
    "empty text": "",
    "empty bytes": b"",
    "zero": 0,
    "negative": -5,
    "big int": 2**70,
    "float": 0.1,
    "small float": 1e-7,
    "large float": 1.5e300,
    "infinity": float("inf"),
    "whole float": 3.0,
    "memoryview": memoryview(b"view"),
    "large value": b"x"
    * 10_000,  # past redis-py's buffer cut-off: it sends such a value as a chunk of its own
}


def joined(chunks: list[bytes]) -> bytes:
    return b"".join(bytes(chunk) for chunk in chunks)


@pytest.mark.parametrize("kind", [Connection, SSLConnection, UnixDomainSocketConnection])
def test_every_connection_kind_has_a_packing_twin(kind: type[Connection]) -> None:
    packed = _PACKED[kind]
    assert issubclass(packed, kind)
    assert packed.pack_command is not kind.pack_command


@pytest.mark.parametrize("value", ARGUMENTS.values(), ids=ARGUMENTS.keys())
def test_a_command_packs_to_the_bytes_redis_py_sends(value: Any) -> None:
    theirs, ours = Connection(), _PACKED[Connection]()
    command = ("EVALSHA", "f" * 40, 2, "routeq:a", value, value, 7)
    assert joined(ours.pack_command(*command)) == joined(theirs.pack_command(*command))


def test_a_command_name_of_two_words_is_sent_as_two() -> None:
    theirs, ours = Connection(), _PACKED[Connection]()
    for command in (("SCRIPT LOAD", "return 1"), (b"CLIENT SETNAME", b"worker")):
        assert joined(ours.pack_command(*command)) == joined(theirs.pack_command(*command))
        assert joined(ours.pack_command(*command)).startswith(b"*3\r\n")


def test_a_pipeline_packs_its_commands_in_order() -> None:
    theirs, ours = Connection(), _PACKED[Connection]()
    commands = [("SET", "a", 1), ("GET", "a"), ("HSET", "h", "f", b"x" * 10_000)]
    assert joined(ours.pack_commands(commands)) == joined(theirs.pack_commands(commands))


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}], ids=["bool", "None", "list", "dict"])
def test_a_value_redis_cannot_take_is_redis_pys_data_error_naming_its_type(value: Any) -> None:
    with pytest.raises(DataError, match=type(value).__name__):
        _PACKED[Connection]().pack_command("SET", "key", value)
    with pytest.raises(DataError):  # as redis-py's own packing refuses it
        Connection().pack_command("SET", "key", value)


async def test_connect_redis_gives_pools_that_pack_with_hiredis_and_round_trip() -> None:
    settings = pipeline_settings(redis_url=service_url(REDIS_ENV), database_url="sqlite+aiosqlite://")
    redis = await connect_redis(settings)
    try:
        assert redis.connection_pool.connection_class is _PACKED[Connection]
        key = "routeq:test:packing"
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(key, "é ✓")
            pipe.append(key, b"\x00\xff")
            pipe.expire(key, 60)
            pipe.get(key)
            pipe.execute_command("EVAL", "return {ARGV[1], ARGV[2]}", 0, 0.5, 2**40)
            *_, value, numbers = await pipe.execute()
        assert value == "é ✓".encode() + b"\x00\xff"
        assert numbers == [b"0.5", b"1099511627776"]
        await redis.delete(key)
    finally:
        await redis.aclose()


async def test_a_pool_arq_made_packs_with_hiredis_after_pack_with_hiredis() -> None:
    url = service_url(REDIS_ENV)
    redis = await create_pool(redis_settings(url))  # arq's pool, as a worker given a URL makes
    try:
        pool = redis.connection_pool
        assert pool.connection_class is Connection
        await pack_with_hiredis(redis)
        assert pool.connection_class is _PACKED[Connection]
        assert await redis.ping()
        assert {type(conn) for conn in pool._available_connections} == {_PACKED[Connection]}
        await pack_with_hiredis(redis)  # again: nothing changes
        assert pool.connection_class is _PACKED[Connection]
    finally:
        await redis.aclose()


async def test_a_worker_started_from_a_redis_url_packs_with_hiredis() -> None:
    settings = pipeline_settings(redis_url=service_url(REDIS_ENV), database_url="sqlite+aiosqlite://")
    seen: list[type[Any]] = []

    async def record(context: WorkerContext) -> None:  # after start-up, before any job
        seen.append(worker.pool.connection_pool.connection_class)

    worker = build_worker(settings, burst=True, handle_signals=False, after_startup=record)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert seen == [_PACKED[Connection]]


def packing(conn: AbstractConnection) -> _HiredisPacking:
    """A connection of routeq's pools, as its own class."""
    assert isinstance(conn, _HiredisPacking)
    return conn


async def test_the_lending_check_completes_without_waiting_on_the_loop() -> None:
    settings = pipeline_settings(redis_url=service_url(REDIS_ENV), database_url="sqlite+aiosqlite://")
    redis = await connect_redis(settings)
    try:
        assert await redis.ping()
        conn = packing(redis.connection_pool._available_connections[0])
        check = conn.can_read_destructive()
        with pytest.raises(StopIteration) as done:  # it never suspends: no timer, no read, no turn
            check.send(None)
        assert done.value.value is False  # a clean connection may be lent
    finally:
        await redis.aclose()


async def test_a_pool_lends_no_connection_holding_a_reply_nobody_read() -> None:
    settings = pipeline_settings(redis_url=service_url(REDIS_ENV), database_url="sqlite+aiosqlite://")
    redis = await connect_redis(settings)
    pool = redis.connection_pool
    try:
        conn = packing(await pool.get_connection())
        await conn.send_command("ECHO", "stale")  # its reply is never read
        await until(
            conn.can_read_destructive, timeout_s=10, what="the reply to reach the connection", every_s=0.001
        )
        await pool.release(conn)
        assert pool._available_connections == [conn]
        await redis.set("routeq:test:lending", "fresh", ex=60)
        assert await redis.get("routeq:test:lending") == b"fresh"  # not b"stale"
        await redis.delete("routeq:test:lending")
    finally:
        await redis.aclose()


async def test_a_connection_the_server_closed_is_connected_again_before_it_is_lent() -> None:
    settings = pipeline_settings(redis_url=service_url(REDIS_ENV), database_url="sqlite+aiosqlite://")
    redis = await connect_redis(settings)
    other = await connect_redis(settings)
    pool = redis.connection_pool
    try:
        conn = packing(await pool.get_connection())
        await conn.send_command("CLIENT", "ID")
        killed = int(await conn.read_response())
        await pool.release(conn)
        await other.client_kill_filter(_id=str(killed))

        async def refused() -> bool:
            try:
                await conn.can_read_destructive()
            except RedisConnectionError:
                return True
            return False

        # The close has reached the connection: it may not be lent as is.
        await until(refused, timeout_s=10, what="the server's close to reach the connection", every_s=0.001)
        assert await redis.ping()  # the pool connected it again
        assert int(await redis.client_id()) != killed
    finally:
        await redis.aclose()
        await other.aclose()
