"""The live catalog's versions in SQL: `catalog_versions`, append-only.

A version is the whole catalog document (the TOML file's `[[deployments]]` tables as JSON), never a
diff: the newest row is the catalog, any older row can be read back (`routeq catalog history`).
A change names the version it was made against and claims the next number; the primary key, not a
prior SELECT, decides between two changes made against the same version: the second gets
`CatalogConflictError` and nothing is lost silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import CatalogConflictError
from storage.jobs import aware
from storage.sql.database import Database
from storage.sql.schema import catalog_versions

__all__ = ["CatalogVersion", "CatalogVersions"]

_T = catalog_versions.c


@dataclass(frozen=True, slots=True)
class CatalogVersion:
    """One version of the catalog as stored.

    Attributes:
        version: 1 for the first; each change adds one.
        document: `{"deployments": [{field: value}, ...]}`, the catalog as its TOML file says it.
        author: who made it (`seed`, an operator key's user, the CLI's `$USER`).
        comment: why (free text; the seeding file's path for a seed).
        seed_hash: for a version imported from the TOML file at start-up, its document's SHA-256.
    """

    version: int
    document: dict[str, Any]
    author: str
    comment: str
    seed_hash: str | None
    created_at: datetime


def _record(row: RowMapping) -> CatalogVersion:
    created = aware(row["created_at"])
    assert created is not None  # NOT NULL
    return CatalogVersion(
        version=row["version"],
        document=row["document"],
        author=row["author"],
        comment=row["comment"],
        seed_hash=row["seed_hash"],
        created_at=created,
    )


class CatalogVersions:
    """Read and append versions of the catalog."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._insert = db.insert_ignoring_duplicates(catalog_versions)

    async def newest(self) -> CatalogVersion | None:
        """The catalog now: the highest version, or None before the first is stored."""
        query = select(catalog_versions).order_by(_T.version.desc()).limit(1)
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _record(row._mapping)

    async def newest_number(self) -> int:
        """The highest version number, 0 when none is stored (no document read)."""
        async with self._db.reading() as conn:
            return await _newest_number(conn)

    async def get(self, version: int) -> CatalogVersion | None:
        async with self._db.reading() as conn:
            row = (await conn.execute(select(catalog_versions).where(_T.version == version))).first()
        return None if row is None else _record(row._mapping)

    async def history(self, *, limit: int = 50) -> list[CatalogVersion]:
        """The newest `limit` versions, newest first."""
        query = select(catalog_versions).order_by(_T.version.desc()).limit(limit)
        async with self._db.reading() as conn:
            return [_record(row._mapping) for row in await conn.execute(query)]

    async def last_seed_hash(self) -> str | None:
        """The `seed_hash` of the newest version seeded from the TOML file, if any was."""
        query = select(_T.seed_hash).where(_T.seed_hash.is_not(None)).order_by(_T.version.desc()).limit(1)
        async with self._db.reading() as conn:
            return (await conn.execute(query)).scalar()

    async def commit(
        self,
        document: dict[str, Any],
        *,
        after: int,
        author: str,
        comment: str = "",
        seed_hash: str | None = None,
    ) -> CatalogVersion:
        """Store `document` as version `after + 1` (`after` = 0: the first version).

        The caller has validated the document; this only orders versions.

        Raises:
            CatalogConflictError: version `after + 1` exists already (someone changed the catalog
                since `after` was read), or `after` is not a version at all.
        """
        record = CatalogVersion(after + 1, document, author, comment, seed_hash, self._db.now())
        row = {
            "version": record.version,
            "document": document,
            "author": author,
            "comment": comment,
            "seed_hash": seed_hash,
            "created_at": record.created_at,
        }

        async def write(conn: AsyncConnection) -> int | None:
            newest = await _newest_number(conn)
            if newest != after:
                return newest
            inserted = (await conn.execute(self._insert, row)).rowcount == 1
            return None if inserted else await _newest_number(conn)

        newest = await self._db.writes.run(write)
        if newest is not None:
            raise CatalogConflictError(after, newest)
        return record


async def _newest_number(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.coalesce(func.max(_T.version), 0)))).scalar_one())
