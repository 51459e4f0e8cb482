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
import dataclasses
import json
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from router_core.errors import ConfigError, InvalidRequestError
from storage.errors import NotFoundError, ServiceUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from producer.client import Client
    from router_core.catalog import Catalog
    from storage.settings import Settings
    from storage.sql.store import Store

__all__ = [
    "FileOrCommand",
    "JsonFlag",
    "err_console",
    "execute",
    "fail",
    "load_catalog_or_exit",
    "load_settings",
    "print_json",
    "with_client",
    "with_redis",
    "with_store",
]

err_console = Console(stderr=True)
T = TypeVar("T")

# Every command that prints a table takes it: the same data as one JSON document on stdout.
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of text and tables.")
]


def fail(message: str, *, code: int = 2, prefix: str = "error") -> typer.Exit:
    """Print `prefix: message` as one red line on stderr and return the exit to raise.

    The message is escaped: error texts quote TOML tables (`[deployments.price]`) and names
    (`tenant:x`) that rich would otherwise read as markup or emoji and drop.
    """
    err_console.print(f"[red]{prefix}:[/red] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)
    return typer.Exit(code)


def _jsonable(value: Any) -> Any:
    """What `json` cannot write by itself: amounts, times, enums, dataclasses."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_json(data: Any) -> None:
    """`data` as one JSON document on stdout, unstyled (the `--json` of every command)."""
    sys.stdout.write(json.dumps(data, default=_jsonable, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def finite_usd(value: float | None) -> float | None:
    """A typer callback for amounts in USD: `inf` and `nan` parse as floats but are no amount."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number of USD, not {value}")
    return value


def load_settings() -> Settings:
    """`Settings()` from the environment; pydantic-settings is imported only by commands that need it.

    A bad value is one error line naming each variable and what it takes, not a traceback.
    """
    from storage.settings import Settings  # noqa: PLC0415 - `routeq --help` reads no settings

    return settings_or_exit(Settings)


S = TypeVar("S")


def settings_or_exit(make: Callable[[], S]) -> S:
    """`make()` (a pydantic-settings class), or one line naming every bad ROUTEQ_ variable and exit 2."""
    from pydantic import ValidationError  # noqa: PLC0415 - pydantic loads with the settings

    try:
        return make()
    except ValidationError as exc:
        problems = [
            f"ROUTEQ_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            + (f" (got {error['input']!r})" if isinstance(error.get("input"), str | int | float) else "")
            for error in exc.errors()
        ]
        raise fail("; ".join(problems) + "; fix the environment (or .env)", prefix="settings error") from None


def execute(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` (on uvloop where it is installed); known errors become one red line and exit
    status 2 (1 for unknown ids)."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(coro)
    except NotFoundError as exc:
        raise fail(str(exc), code=1) from exc
    except (ServiceUnavailableError, ConfigError, InvalidRequestError) as exc:
        raise fail(str(exc)) from exc


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (not on Windows), else None (asyncio's own): in a
    worker and in `routeq serve` (uvicorn picks uvloop by itself) the loop's own work was a sixth of
    the CPU a chat completion costs, and uvloop does it in C."""
    try:
        import uvloop  # noqa: PLC0415 - commands that run a loop only
    except ImportError:
        return None
    return uvloop.new_event_loop


def load_catalog_or_exit(path: Path | None = None) -> Catalog:
    """The catalog at `path` (None: ROUTEQ_CATALOG_PATH, else the demo), or one error line and exit 2."""
    from router_core.catalog import load_catalog  # noqa: PLC0415 - genai-prices: commands with a catalog
    from router_core.settings import RouterSettings  # noqa: PLC0415 - start-up: imported on use

    configured = settings_or_exit(RouterSettings).catalog_path if path is None else None
    try:
        return load_catalog(path if path is not None else configured)
    except ConfigError as exc:
        hint = "" if configured is None else " (ROUTEQ_CATALOG_PATH; unset it to use the demo catalog)"
        raise fail(f"{exc}{hint}", prefix="config error") from exc


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


@asynccontextmanager
async def optional_redis(settings: Settings) -> AsyncIterator[Redis | None]:
    """The fleet's Redis when ROUTEQ_REDIS_URL is set (closed after), else None: for commands that
    work on SQL alone and tell the fleet when there is one."""
    if settings.redis_url is None:
        yield None
        return
    from storage.connections import connect_redis  # noqa: PLC0415 - arq and redis: fleet commands only

    redis = await connect_redis(settings)
    try:
        yield redis
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


class FileOrCommand(TyperGroup):
    """A command group whose first word, when it names none of its commands, is the argument of its
    `show` command: `routeq catalog FILE` (and plain `routeq catalog`) shows a catalog file, while
    `routeq catalog export` runs `export`. A file named like a command is reached as `./export`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own vendored click Context
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["show", *args]
        return super().parse_args(ctx, args)
