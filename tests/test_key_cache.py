"""The API servers' cache of API keys (storage.fleet.key_cache): a key looked up once is not read
from SQL again until a key changes, and a change made anywhere reaches the next request at once.

"Another process" is a second `Store` on the same database with its own Redis connection: it shares
nothing in memory with the cache, as `routeq keys revoke` on another machine would not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from producer.cli import app
from storage import keys
from storage.fleet.key_cache import KEY_CACHE_TTL_S, KeyCache, announce_key_change
from storage.fleet.ratelimits import RateLimits
from storage.sql.store import Store
from tests.backends import REDIS_ENV, Backend, service_url


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def other_store(backend_on_file: Backend) -> AsyncIterator[Store]:
    """The same database opened by another process."""
    store = await Store.open(backend_on_file.settings.database_url)
    try:
        yield store
    finally:
        await store.close()


async def test_a_key_is_read_from_sql_once_until_a_key_changes(backend_on_file: Backend) -> None:
    store = backend_on_file.store
    key, secret = await store.api_keys.create(tenant="acme", user_id="ana")
    cache = KeyCache(await backend_on_file.redis(), store.api_keys)
    for _ in range(3):
        found = await cache.authenticate(secret)
        assert found is not None
        assert (found.id, found.tenant, found.user_id) == (key.id, "acme", "ana")
    assert cache.sql_reads == 1
    # A change made through this process's own store needs no announcement.
    await store.api_keys.set_limits(key.id, RateLimits(rpm=7))
    limited = await cache.authenticate(secret)
    assert limited is not None
    assert limited.limits.rpm == 7
    assert cache.sql_reads == 2
    await store.api_keys.revoke(key.id)
    assert await cache.authenticate(secret) is None


async def test_a_change_announced_by_another_process_reaches_the_next_request(
    backend_on_file: Backend, other_store: Store
) -> None:
    key, secret = await backend_on_file.store.api_keys.create(tenant="acme", user_id="ana")
    other, _ = await backend_on_file.store.api_keys.create(tenant="acme", user_id="bo")
    cache = KeyCache(await backend_on_file.redis(), backend_on_file.store.api_keys)
    assert await cache.authenticate(secret) is not None
    elsewhere = await backend_on_file.redis()

    # Another key's change: every kept key is read again (one version for all), and still works.
    await other_store.api_keys.revoke(other.id)
    await announce_key_change(elsewhere)
    assert await cache.authenticate(secret) is not None
    assert cache.sql_reads == 2

    await other_store.api_keys.set_allowed_models(key.id, ["cheap-a"])
    await announce_key_change(elsewhere)
    allowed = await cache.authenticate(secret)
    assert allowed is not None
    assert allowed.allowed_models == ("cheap-a",)

    await other_store.api_keys.revoke(key.id)
    await announce_key_change(elsewhere)
    assert await cache.authenticate(secret) is None  # at once: no wait for an expiry
    assert await cache.authenticate(secret) is None


async def test_an_unannounced_change_is_seen_when_the_kept_key_expires(
    backend_on_file: Backend, other_store: Store
) -> None:
    key, secret = await backend_on_file.store.api_keys.create(tenant="acme", user_id="ana")
    clock = Clock()
    cache = KeyCache(await backend_on_file.redis(), backend_on_file.store.api_keys, clock=clock)
    assert await cache.authenticate(secret) is not None
    await other_store.api_keys.revoke(key.id)  # Redis was not told (it was down, say)
    clock.now += KEY_CACHE_TTL_S - 1
    assert await cache.authenticate(secret) is not None  # the bound this cache keeps: its TTL
    clock.now += 1
    assert await cache.authenticate(secret) is None


async def test_a_redis_flush_drops_the_kept_keys(backend_on_file: Backend, other_store: Store) -> None:
    key, secret = await backend_on_file.store.api_keys.create(tenant="acme", user_id="ana")
    redis = await backend_on_file.redis()
    await announce_key_change(redis)
    cache = KeyCache(redis, backend_on_file.store.api_keys)
    assert await cache.authenticate(secret) is not None
    await other_store.api_keys.revoke(key.id)
    await redis.delete(keys.API_KEYS_VERSION)  # data lost: the version a server kept is gone
    assert await cache.authenticate(secret) is None


async def test_unknown_secrets_are_not_kept_and_redis_down_reads_sql(backend_on_file: Backend) -> None:
    key, secret = await backend_on_file.store.api_keys.create(tenant="acme", user_id="ana")
    cache = KeyCache(await backend_on_file.redis(), backend_on_file.store.api_keys)
    for _ in range(2):
        assert await cache.authenticate("rq-" + "x" * 43) is None
    assert cache.sql_reads == 2  # each unknown secret asks SQL: a key made since would be found

    down = Redis.from_url("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        blind = KeyCache(down, backend_on_file.store.api_keys)
        for _ in range(2):
            found = await blind.authenticate(secret)
            assert found is not None
            assert found.id == key.id
        assert blind.sql_reads == 2  # without the version nothing is served from memory
    finally:
        await down.aclose()


runner = CliRunner()


def test_routeq_keys_commands_announce_their_change(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    redis_url = service_url(REDIS_ENV)  # the CLI is another process's view: a real Redis

    def version() -> bytes | None:
        async def read() -> bytes | None:
            redis = Redis.from_url(redis_url)
            try:
                value: bytes | None = await redis.get(keys.API_KEYS_VERSION)
                return value
            finally:
                await redis.aclose()

        return asyncio.run(read())

    monkeypatch.setenv("ROUTEQ_REDIS_URL", redis_url)
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/keys.db")
    key_id = _new_key()
    before = version()
    limited = runner.invoke(app, ["keys", "limit", key_id, "--rpm", "5"])
    assert limited.exit_code == 0, limited.output
    after_limit = version()
    assert after_limit not in (None, before)
    revoked = runner.invoke(app, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    assert version() not in (None, after_limit)


def _new_key() -> str:
    """A key made with `routeq keys create`; its id."""
    created = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--user", "ana"])
    assert created.exit_code == 0, created.output
    listed = runner.invoke(app, ["keys", "list", "--json"])
    return str(json.loads(listed.output)["keys"][0]["id"])


def test_a_revoke_without_redis_says_what_it_means(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/keys.db")
    monkeypatch.setenv("ROUTEQ_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    key_id = _new_key()
    revoked = runner.invoke(app, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output  # revoked in SQL all the same
    assert f"revoked {key_id}" in revoked.output
    assert "could not be told" in revoked.output
    assert f"{KEY_CACHE_TTL_S:g} s" in revoked.output
