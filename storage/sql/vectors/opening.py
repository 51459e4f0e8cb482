"""`open_vector_index`: the store's dialect (and its server's extensions) choose the index."""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError

from storage.sql.engine import is_sqlite
from storage.sql.store import Store
from storage.sql.vectors.in_process import UsearchIndex
from storage.sql.vectors.model import VectorIndex
from storage.sql.vectors.pgvector import PgVectorIndex, has_pgvector
from storage.sql.vectors.sidecar import SqliteVecIndex

__all__ = ["open_vector_index"]

logger = logging.getLogger("routeq.storage")


async def open_vector_index(store: Store) -> VectorIndex:
    """The vector index for `store`: sqlite-vec on SQLite, pgvector where the PostgreSQL server has
    it, otherwise usearch in this process. Close it with `close()` before the store."""
    if is_sqlite(store.engine):
        return await SqliteVecIndex.open(store.db, store.engine.url.database)
    if await has_pgvector(store.engine):
        try:
            return await PgVectorIndex.open(store.db)
        except DBAPIError as exc:
            # Available but not creatable by this role (CREATE EXTENSION needs the privilege).
            logger.warning("pgvector is available but cannot be used (%s); using usearch in-process", exc)
    return UsearchIndex(store.db)
