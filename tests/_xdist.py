"""Service databases of their own for each pytest-xdist worker (`make test` runs two).

The services backend flushes its Redis database and truncates its PostgreSQL tables before each
test, so two workers on the same ones would wipe each other's state. Worker `gwN` (N > 0) takes Redis
database `db - N` and PostgreSQL database `<name>_gwN` (created when missing) instead of those in
ROUTEQ_TEST_REDIS_URL / ROUTEQ_TEST_DATABASE_URL; everything the tests start (workers, `routeq
serve`) gets its URLs from there. gw0 and runs without xdist use the URLs as given.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit, urlunsplit

__all__ = ["isolate_worker"]


def isolate_worker() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    n = int(worker.removeprefix("gw") or 0)
    if n == 0:
        return
    if redis_url := os.environ.get("ROUTEQ_TEST_REDIS_URL", "").strip():
        parts = urlsplit(redis_url)
        db = int(parts.path.lstrip("/") or 0)
        if db - n < 0:
            raise RuntimeError(
                f"ROUTEQ_TEST_REDIS_URL names db {db}: too low to give xdist worker {worker} one"
            )
        os.environ["ROUTEQ_TEST_REDIS_URL"] = urlunsplit(parts._replace(path=f"/{db - n}"))
    if database_url := os.environ.get("ROUTEQ_TEST_DATABASE_URL", "").strip():
        from sqlalchemy.engine import make_url  # noqa: PLC0415 - only under xdist with services

        url = make_url(database_url)
        mine = url.set(database=f"{url.database}_{worker}")
        asyncio.run(_create_database(url.render_as_string(hide_password=False), mine.database or ""))
        os.environ["ROUTEQ_TEST_DATABASE_URL"] = mine.render_as_string(hide_password=False)


async def _create_database(url: str, name: str) -> None:
    """CREATE DATABASE `name` on the server of `url` unless it exists."""
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415 - only under xdist with services

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
