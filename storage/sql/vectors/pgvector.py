"""The vector index of a PostgreSQL store whose server has pgvector: an HNSW index in the database.

Not exercised by CI (Debian 12's PostgreSQL 15 does not package pgvector); `has_pgvector` is what
chooses it and is tested on every PostgreSQL backend.

    routeq_vectors.embeddings one row per `cache_vectors` row (same id): the filter columns and
                              `embedding vector`; an HNSW cosine index per vector size, partial
                              (WHERE dims = n) on `embedding::vector(n)`, since HNSW needs a size

The extension, schema, table and indexes are created on first use, under an advisory lock
(processes starting together). They live in their own PostgreSQL schema, outside alembic's (a
server without pgvector never has them, and the check that migrations match `schema.py` does not
see them). Its foreign key makes `TRUNCATE cache_vectors` need CASCADE on such a server. `add`
writes both rows in one transaction; rows written before the table existed are copied in on open.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.sql.database import Database
from storage.sql.vectors.model import PAGE, Neighbour, VectorEntry, insert_vector, query_bytes, unpack

__all__ = ["PgVectorIndex", "has_pgvector"]

_LOCK_ID = 0x726F75746576  # any constant, the same in every process
_HNSW_MAX_DIMS = 2000  # pgvector's limit for an HNSW index on `vector`; larger sizes are scanned
_TABLE = """
CREATE TABLE IF NOT EXISTS routeq_vectors.embeddings (
    id BIGINT PRIMARY KEY REFERENCES cache_vectors (id) ON DELETE CASCADE,
    job_id VARCHAR(40) NOT NULL,
    tenant VARCHAR(128) NOT NULL,
    grp VARCHAR(64) NOT NULL,
    embedder VARCHAR(128) NOT NULL,
    dims INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    embedding vector NOT NULL
)"""
# The filter columns are copied from the `cache_vectors` row, in the same transaction.
_INSERT = text(
    "INSERT INTO routeq_vectors.embeddings (id, job_id, tenant, grp, embedder, dims, created_at, embedding) "
    "SELECT id, job_id, tenant, grp, embedder, dims, created_at, CAST(CAST(:embedding AS TEXT) AS vector) "
    "FROM cache_vectors WHERE id = :id ON CONFLICT DO NOTHING"
)
_MISSING = text(
    "SELECT v.id, v.vector "
    "FROM cache_vectors v LEFT JOIN routeq_vectors.embeddings e ON e.id = v.id "
    "WHERE e.id IS NULL AND v.id > :after ORDER BY v.id LIMIT :page"
)


async def has_pgvector(engine: AsyncEngine) -> bool:
    """True when `engine` is PostgreSQL and its server can `CREATE EXTENSION vector`."""
    if engine.dialect.name != "postgresql":
        return False
    async with engine.connect() as conn:
        query = text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        return (await conn.execute(query)).first() is not None


def _at_least(version: str, wanted: tuple[int, int]) -> bool:
    """Whether an extension version such as "0.8.0" is at least `wanted` (major, minor)."""
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return tuple(parts) >= wanted


def _literal(vector: Sequence[float]) -> str:
    # Sent as text and cast in SQL (text → vector is the type's input function): no client codec.
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class PgVectorIndex:
    """pgvector HNSW (cosine) over `routeq_vectors.embeddings`, written together with `cache_vectors`."""

    name = "pgvector"

    def __init__(self, db: Database, *, iterative_scan: bool) -> None:
        self._db = db
        self._iterative_scan = iterative_scan
        self._indexed: set[int] = set()  # vector sizes whose HNSW index exists

    @classmethod
    async def open(cls, db: Database) -> PgVectorIndex:
        """Create the extension and table if needed, and copy in rows written before them."""
        async with db.engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            await conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            await conn.execute(text("CREATE SCHEMA IF NOT EXISTS routeq_vectors"))
            await conn.execute(text(_TABLE))
            version = (
                await conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
            ).scalar_one()
        index = cls(db, iterative_scan=_at_least(str(version), (0, 8)))
        await index._backfill()
        return index

    async def _backfill(self) -> None:
        after = 0
        while True:
            async with self._db.engine.begin() as conn:
                rows = (await conn.execute(_MISSING, {"after": after, "page": PAGE})).all()
                for r in rows:
                    await conn.execute(_INSERT, {"id": r.id, "embedding": _literal(unpack(r.vector))})
            if len(rows) < PAGE:
                return
            after = rows[-1].id

    async def _ensure_hnsw(self, dims: int) -> None:
        if dims in self._indexed or dims > _HNSW_MAX_DIMS:
            return
        async with self._db.engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            await conn.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS ix_embeddings_hnsw_{dims} ON routeq_vectors.embeddings "
                    f"USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}"
                )
            )
        self._indexed.add(dims)

    async def add(self, entry: VectorEntry) -> None:
        """Insert the `cache_vectors` row and its embedding row in one transaction."""
        dims = len(entry.vector)
        await self._ensure_hnsw(dims)

        async def embedding(conn: AsyncConnection, row_id: int) -> None:
            await conn.execute(_INSERT, {"id": row_id, "embedding": _literal(entry.vector)})

        await insert_vector(self._db, entry, then=embedding)

    async def nearest(
        self,
        tenant: str,
        grp: str,
        embedder: str,
        vector: Sequence[float],
        *,
        k: int = 4,
        since: datetime | None = None,
    ) -> list[Neighbour]:
        """The `k` most similar rows of that tenant, group and embedder, best first."""
        query_bytes(vector, k)  # the same checks as every index
        dims = len(vector)
        await self._ensure_hnsw(dims)
        # The size is written into the SQL, not bound: the planner must see `dims = n` and
        # `embedding::vector(n)` as in the partial index, also in a prepared statement's generic plan.
        distance = f"embedding::vector({dims}) <=> CAST(CAST(:query AS TEXT) AS vector({dims}))"
        recent = "AND created_at >= :since " if since is not None else ""
        query = text(
            f"SELECT job_id, 1 - ({distance}) AS similarity FROM routeq_vectors.embeddings "
            f"WHERE dims = {dims} AND tenant = :tenant AND grp = :grp AND embedder = :embedder {recent}"
            f"ORDER BY {distance} LIMIT :k"
        )
        params = {"query": _literal(vector), "tenant": tenant, "grp": grp, "embedder": embedder, "k": k}
        async with self._db.engine.begin() as conn:
            if self._iterative_scan:
                # Keep walking the graph until k rows pass the filters (pgvector >= 0.8).
                await conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
            result = await conn.execute(query, params if since is None else {**params, "since": since})
            return [Neighbour(job_id, float(similarity)) for job_id, similarity in result.all()]

    async def close(self) -> None:
        """Nothing to release: the index lives in the database."""
