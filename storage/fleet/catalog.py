"""The live catalog: deployments kept in SQL, versioned, and picked up by every process while it runs.

    SQL  catalog_versions     every version of the catalog document (storage/sql/catalog.py)
    Redis routeq:catalog:version   the newest version number, raised after each commit
          routeq:catalog:changed   a message with that number, published with the raise

A change (`commit_change`: the CLI's `routeq catalog add|set|disable|enable|remove|import`, the admin
API) validates the whole new catalog, appends it to SQL as version n+1 (a change made against an
older version is a `CatalogConflictError`), then raises the version key and publishes. Each worker
and API process holds its catalog in a `LiveCatalog`: woken by the message, or at the latest after
`catalog_refresh_s` (it reads the version key that often, in case a message was lost), it reads the
newest version from SQL, validates it and hands it to its listeners (the router, the response
cache, the API's input rules). Reading the catalog (`current`) touches neither SQL nor Redis.

Seeding: when SQL holds no catalog, the configured TOML file (ROUTEQ_CATALOG_PATH, else the demo
catalog) becomes version 1. Afterwards the file seeds again, as a new version, only when its content
(the SHA-256 of its tables) differs from the last version it seeded: editing the file and
restarting works as before, and a restart with an unchanged file keeps the changes made live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from router_core.catalog import Catalog, read_catalog_document
from router_core.catalog_edit import Document, document_hash, validate
from router_core.errors import ConfigError, RouteqError
from storage import keys
from storage.bus.notifier import Notifier, exact_pattern
from storage.errors import CatalogConflictError
from storage.settings import Settings
from storage.sql.catalog import CatalogVersion
from storage.sql.store import Store

__all__ = [
    "CatalogListener",
    "Edit",
    "LiveCatalog",
    "announce",
    "commit_change",
    "newest_catalog",
    "seed_catalog",
    "source_of",
]

logger = logging.getLogger("routeq.catalog")

# Called with the new catalog after each pick-up, in the order registered.
CatalogListener = Callable[[Catalog], None]
# A change: the newest document in, the new document (validated) out.
Edit = Callable[[Document], tuple[Document, Catalog]]

# Raise the version (never lower it: a slow committer must not hide a newer version), then publish.
_ANNOUNCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return current
"""
# A change made without a version to check is re-applied on the newest this many times.
_REAPPLY = 5


def source_of(version: int) -> str:
    """How a live catalog version names itself in errors and in `routeq catalog`."""
    return f"<live catalog v{version}>"


async def newest_catalog(store: Store) -> Catalog | None:
    """The live catalog's newest version, validated; None while SQL holds none (not seeded yet)."""
    stored = await store.catalog.newest()
    return None if stored is None else validate(stored.document, source=source_of(stored.version))


async def announce(redis: Redis, version: int) -> None:
    """Tell every process that `version` is committed: raise the version key, publish on the channel."""
    await redis.eval(_ANNOUNCE, 2, keys.CATALOG_VERSION, keys.CATALOG_CHANGED, str(version))  # type: ignore[misc]


async def seed_catalog(store: Store, redis: Redis | None, path: str | Path | None) -> CatalogVersion | None:
    """Import the TOML file at `path` (None: the demo catalog) when the rule above says so.

    Returns the version it stored, or None when the file's content is the one last seeded (or
    another process stored a version meanwhile).

    Raises:
        ConfigError: the file is unreadable or invalid (named with the deployment and field).
    """
    document, where = read_catalog_document(path)
    validate(document, source=where)
    digest = document_hash(document)
    newest = await store.catalog.newest_number()
    if newest and await store.catalog.last_seed_hash() == digest:
        return None
    if newest:
        logger.info(
            "catalog file %s changed since it last seeded the live catalog: it becomes version %d",
            where,
            newest + 1,
        )
    try:
        stored = await store.catalog.commit(
            document, after=newest, author="seed", comment=f"seeded from {where}", seed_hash=digest
        )
    except CatalogConflictError:
        return None  # another process seeded or changed it first: that version is the catalog
    if redis is not None:
        await announce(redis, stored.version)
    return stored


async def commit_change(
    store: Store,
    redis: Redis | None,
    edit: Edit,
    *,
    author: str,
    comment: str = "",
    expected: int | None = None,
) -> tuple[CatalogVersion, Catalog]:
    """Apply `edit` to the newest version and commit the result as the next one, then announce it.

    With `expected`, the change was made against that version: if it is no longer the newest,
    `CatalogConflictError`. Without, a version committed concurrently is not overwritten: the edit
    is re-applied on top of it. `redis` None (no fleet Redis: embedded mode) announces nothing;
    embedded processes read SQL's newest version instead (`LiveCatalog(poll_sql=True)`).

    Raises:
        ConfigError: the edit makes an invalid catalog (deployment and field named), or there is
            no catalog yet (nothing seeded it).
        CatalogConflictError: as above.
    """
    seen = 0
    for _ in range(_REAPPLY):
        newest = await store.catalog.newest()
        if newest is None:
            raise ConfigError(
                "no live catalog yet: a worker or the API seeds it at start, or `routeq catalog import`"
            )
        if expected is not None and expected != newest.version:
            raise CatalogConflictError(expected, newest.version)
        seen = newest.version
        document, catalog = edit(newest.document)
        try:
            stored = await store.catalog.commit(
                document, after=newest.version, author=author, comment=comment
            )
        except CatalogConflictError:
            if expected is not None:
                raise
            continue
        if redis is not None:
            await announce(redis, stored.version)
        return stored, catalog
    raise CatalogConflictError(seen, await store.catalog.newest_number())


class LiveCatalog:
    """This process's catalog, swapped when a new version is committed anywhere in the fleet.

    Open with `LiveCatalog.open(...)` (seeds, loads, follows) and `close()`; `LiveCatalog.fixed`
    holds a catalog that never changes (a caller that brings its own, tests).
    """

    def __init__(
        self,
        catalog: Catalog,
        version: int,
        *,
        redis: Redis | None = None,
        store: Store | None = None,
        refresh_s: float = 2.0,
        poll_sql: bool = False,
    ) -> None:
        self._catalog = catalog
        self._version = version
        self._redis = redis
        self._store = store
        # An in-process Redis hears no other process: ask SQL for the newest version instead.
        self._poll_sql = poll_sql
        self._listeners: list[CatalogListener] = []
        self._task: asyncio.Task[None] | None = None
        self._notifier: Notifier | None = None
        self.refresh_s = refresh_s  # the bound: a refresh at least this often, message or not
        self.pickups = 0  # versions picked up since start (tests, logs)

    @classmethod
    def fixed(cls, catalog: Catalog) -> LiveCatalog:
        """A holder of `catalog` alone: no SQL, no Redis, never changes."""
        return cls(catalog, 0)

    @classmethod
    async def open(
        cls,
        redis: Redis,
        store: Store,
        *,
        seed_path: str | Path | None,
        refresh_s: float = 2.0,
        poll_sql: bool = False,
    ) -> LiveCatalog:
        """Seed SQL from `seed_path` if the rule says so, load the newest version, start following.

        `poll_sql`: `redis` is this process's own (embedded), so each refresh reads SQL's newest
        version number instead of the version key (changes made by `routeq deployments ...`).

        Raises:
            ConfigError: the seeding file or the stored catalog is invalid.
        """
        await seed_catalog(store, redis, seed_path)
        stored = await store.catalog.newest()
        assert stored is not None  # seeded above, or by another process first
        catalog = validate(stored.document, source=source_of(stored.version))
        live = cls(catalog, stored.version, redis=redis, store=store, refresh_s=refresh_s, poll_sql=poll_sql)
        live.start()
        return live

    @classmethod
    async def from_settings(cls, redis: Redis, store: Store, settings: Settings) -> LiveCatalog:
        """`open` as the settings say: the catalog file seeds it, `catalog_refresh_s` bounds it,
        and with no ROUTEQ_REDIS_URL (`redis` is in-process) it reads SQL's version number."""
        return await cls.open(
            redis,
            store,
            seed_path=settings.catalog_path,
            refresh_s=settings.catalog_refresh_s,
            poll_sql=settings.redis_url is None,
        )

    @property
    def current(self) -> Catalog:
        """The catalog to plan the next request with (no I/O)."""
        return self._catalog

    @property
    def version(self) -> int:
        """The version `current` is (0 for a fixed catalog)."""
        return self._version

    def on_change(self, listener: CatalogListener) -> Callable[[], None]:
        """Call `listener` with each new catalog; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def start(self) -> None:
        """Follow the fleet's changes (idempotent; a fixed catalog has none to follow)."""
        if self._redis is None or (self._task is not None and not self._task.done()):
            return
        self._notifier = Notifier(self._redis, patterns=(exact_pattern(keys.CATALOG_CHANGED),))
        self._task = asyncio.create_task(self._follow(self._notifier), name="routeq-live-catalog")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._notifier is not None:
            await self._notifier.close()

    async def refresh(self) -> bool:
        """Read the version key (SQL's newest when Redis lost it); load a newer version. True if swapped.

        Raises:
            ConfigError: the stored version does not validate here (the old catalog stays).
        """
        if self._redis is None or self._store is None:
            return False
        raw: Any = None if self._poll_sql else await self._redis.get(keys.CATALOG_VERSION)
        seen = int(raw) if raw is not None else await self._store.catalog.newest_number()
        if seen <= self._version:
            return False
        stored = await self._store.catalog.newest()
        if stored is None or stored.version <= self._version:
            return False
        self._swap(validate(stored.document, source=source_of(stored.version)), stored.version)
        return True

    def _swap(self, catalog: Catalog, version: int) -> None:
        """Hand `catalog` to every listener, then hold it: if a listener fails, the next refresh
        tries the same version again (listeners take a catalog they already have without harm)."""
        for listener in list(self._listeners):
            listener(catalog)
        old = self._catalog
        self._catalog, self._version = catalog, version
        self.pickups += 1
        added = [d for d in catalog if d not in old]
        removed = [d for d in old if d not in catalog]
        changed = [d for d in catalog if d in old and old[d] != catalog[d]]
        logger.info(
            "catalog version %d picked up (added %s, removed %s, changed %s)",
            version,
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
            ", ".join(changed) or "none",
        )

    async def _follow(self, notifier: Notifier) -> None:
        """Refresh on each message, and every `refresh_s` whatever happens (the guaranteed bound)."""
        async with notifier.watch(keys.CATALOG_CHANGED) as signal:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.refresh_s):
                        await signal.wait()
                try:
                    await self.refresh()
                except (RouteqError, RedisError, SQLAlchemyError, OSError) as exc:
                    logger.warning(
                        "the live catalog was not refreshed (%s); keeping version %d", exc, self._version
                    )
                except Exception:  # a listener's bug must not end the following: log it, try again
                    logger.exception("the live catalog's listeners failed; keeping version %d", self._version)
