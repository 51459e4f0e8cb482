"""What every command shares: known errors as one red line, and connections closed after use.

Each command builds `Settings()` once, turns connection failures into one red line naming the URL
(exit status 2), and never prints a traceback for a known error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import typer
from redis.asyncio import Redis
from rich.console import Console

from producer.client import Client
from router_core.errors import ConfigError
from storage.connections import connect_redis
from storage.errors import NotFoundError, ServiceUnavailableError
from storage.settings import Settings
from storage.sql.store import Store

__all__ = ["err_console", "execute", "with_client", "with_redis", "with_store"]

err_console = Console(stderr=True)
T = TypeVar("T")


def execute(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro`; known errors become one red line and exit status 2 (1 for unknown ids)."""
    try:
        return asyncio.run(coro)
    except NotFoundError as exc:
        err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from exc
    except (ServiceUnavailableError, ConfigError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


async def with_client(settings: Settings, action: Callable[[Client], Awaitable[T]]) -> T:
    """Run `action` on a client of the fleet's Redis and database (every tenant), closed after."""
    if settings.redis_url is None:
        raise ServiceUnavailableError.redis_unset(
            "Set it to your Redis (redis://host:6379/0); for a one-off local run use `routeq run FILE`."
        )
    async with await Client.connect(settings, all_tenants=True) as client:
        return await action(client)


async def with_redis(settings: Settings, action: Callable[[Redis], Awaitable[T]], *, hint: str) -> T:
    """Run `action` on a connection to the fleet's Redis, closed after; `hint` says why it is needed."""
    if settings.redis_url is None:
        raise ServiceUnavailableError.redis_unset(hint)
    redis = await connect_redis(settings)
    try:
        return await action(redis)
    finally:
        await redis.aclose()


async def with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    """Run `action` on the SQL store (migrated to the newest schema), closed after."""
    store = await Store.open(settings.database_url)
    try:
        return await action(store)
    finally:
        await store.close()
