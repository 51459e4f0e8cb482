"""What every command shares: known errors as one red line, and connections closed after use.

Each command builds `Settings()` once, turns connection failures into one red line naming the URL
(exit status 2), and never prints a traceback for a known error.

Start-up cost: `routeq --help` imports every command module, so modules here import only typer,
rich and the error classes at the top. Settings (pydantic-settings), the SQL store (SQLAlchemy,
alembic), Redis and arq, FastAPI and the provider SDKs are imported inside the commands that use
them; tests/test_cli_startup.py checks that `--help`, `status` and `results` stay light.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from router_core.errors import ConfigError, InvalidRequestError
from storage.errors import NotFoundError, ServiceUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from producer.client import Client
    from storage.settings import Settings
    from storage.sql.store import Store

__all__ = ["err_console", "execute", "load_settings", "with_client", "with_redis", "with_store"]

err_console = Console(stderr=True)
T = TypeVar("T")


def finite_usd(value: float | None) -> float | None:
    """A typer callback for amounts in USD: `inf` and `nan` parse as floats but are no amount."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number of USD, not {value}")
    return value


def load_settings() -> Settings:
    """`Settings()` from the environment; pydantic-settings is imported only by commands that need it."""
    from storage.settings import Settings  # noqa: PLC0415 - `routeq --help` reads no settings

    return Settings()


def execute(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro`; known errors become one red line and exit status 2 (1 for unknown ids)."""
    try:
        return asyncio.run(coro)
    except NotFoundError as exc:
        err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from exc
    except (ServiceUnavailableError, ConfigError, InvalidRequestError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


async def with_client(settings: Settings, action: Callable[[Client], Awaitable[T]]) -> T:
    """Run `action` on a client of the fleet's Redis and database (every tenant), closed after."""
    if settings.redis_url is None:
        raise ServiceUnavailableError.redis_unset(
            "Set it to your Redis (redis://host:6379/0); for a one-off local run use `routeq run FILE`."
        )
    from producer.client import Client  # noqa: PLC0415 - arq and redis load only for fleet commands

    async with await Client.connect(settings, all_tenants=True) as client:
        return await action(client)


async def with_redis(settings: Settings, action: Callable[[Redis], Awaitable[T]], *, hint: str) -> T:
    """Run `action` on a connection to the fleet's Redis, closed after; `hint` says why it is needed."""
    if settings.redis_url is None:
        raise ServiceUnavailableError.redis_unset(hint)
    from storage.connections import connect_redis  # noqa: PLC0415 - arq and redis: fleet commands only

    redis = await connect_redis(settings)
    try:
        return await action(redis)
    finally:
        await redis.aclose()


async def with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    """Run `action` on the SQL store (migrated to the newest schema), closed after."""
    from storage.sql.store import Store  # noqa: PLC0415 - SQLAlchemy only for commands that read SQL

    store = await Store.open(settings.database_url)
    try:
        return await action(store)
    finally:
        await store.close()
