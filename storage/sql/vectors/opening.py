"""`open_vector_index`: the store's dialect (and its server's extensions) choose the index.

Each backend's module is imported only when chosen: apsw and sqlite-vec, or numpy and usearch, load
only in a process that opens that index (a tenth of a second for usearch and numpy).
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError

from storage.sql.engine import is_sqlite
from storage.sql.store import Store
from storage.sql.vectors.model import VectorIndex
from storage.sql.vectors.pgvector import PgVectorIndex, has_pgvector

__all__ = ["open_vector_index"]

logger = logging.getLogger("routeq.storage")


async def open_vector_index(store: Store) -> VectorIndex:
    """The vector index for `store`: sqlite-vec on SQLite, pgvector where the PostgreSQL server has
    it, otherwise one in this process. Close it with `close()` before the store."""
    if is_sqlite(store.engine):
        from storage.sql.vectors.sidecar import SqliteVecIndex  # noqa: PLC0415 - loads apsw, sqlite-vec

        return await SqliteVecIndex.open(store.db, store.engine.url.database)
    if await has_pgvector(store.engine):
        try:
            return await PgVectorIndex.open(store.db)
        except DBAPIError as exc:
            # Available but not creatable by this role (CREATE EXTENSION needs the privilege).
            logger.warning("pgvector is available but cannot be used (%s); using an in-process index", exc)
    from storage.sql.vectors.in_process import UsearchIndex  # noqa: PLC0415 - loads numpy, usearch

    return UsearchIndex(store.db)
