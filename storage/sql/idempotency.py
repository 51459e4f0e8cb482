"""Idempotency keys in SQL: the batch (and job) the first request with a key created.

A key is claimed in the same transaction that creates the batch (`Batches.create`): two requests
racing with one key create one batch between them, decided by the primary key (tenant, key), not
by a prior SELECT. A row older than the retention window is deleted when its key comes again, so
the key starts over.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import IdempotencyKeyReusedError
from storage.jobs import CreatedBatch, IdempotencyKey
from storage.sql.database import Database
from storage.sql.schema import idempotency_keys

__all__ = ["IdempotencyKeys", "KeyRecord"]

_T = idempotency_keys.c


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a key's first request created."""

    fingerprint: str
    batch_id: str
    job_id: str | None

    def replay(self, key: IdempotencyKey) -> CreatedBatch:
        """The first request's batch for a request with the same key.

        Raises:
            IdempotencyKeyReusedError: the request differs from the first one (route or body).
        """
        if key.fingerprint != self.fingerprint:
            raise IdempotencyKeyReusedError(key.key)
        return CreatedBatch(self.batch_id, [] if self.job_id is None else [self.job_id], replayed=True)


class IdempotencyKeys:
    """Reads of `idempotency_keys` (claims happen inside `Batches.create`'s transaction)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._insert = db.insert_ignoring_duplicates(idempotency_keys)

    async def find(self, tenant: str, key: IdempotencyKey) -> CreatedBatch | None:
        """The batch the key's first request created, if it is within the retention window.

        Raises:
            IdempotencyKeyReusedError: the key was used for a different request.
        """
        async with self._db.reading() as conn:
            record = await _read(conn, tenant, key)
        return None if record is None else record.replay(key)

    async def claim(
        self, conn: AsyncConnection, tenant: str, key: IdempotencyKey, created: CreatedBatch
    ) -> KeyRecord | None:
        """Record `key` for `created` in the caller's transaction; the existing record if it is taken."""
        await conn.execute(
            delete(idempotency_keys).where(
                (_T.tenant == tenant) & (_T.idempotency_key == key.key) & (_T.created_at < key.not_before)
            )
        )
        row = {
            "tenant": tenant,
            "idempotency_key": key.key,
            "fingerprint": key.fingerprint,
            "batch_id": created.batch_id,
            "job_id": created.job_ids[0] if len(created.job_ids) == 1 else None,
            "created_at": self._db.now(),
        }
        if (await conn.execute(self._insert, row)).rowcount == 1:
            return None
        return await _read(conn, tenant, key)


async def _read(conn: AsyncConnection, tenant: str, key: IdempotencyKey) -> KeyRecord | None:
    query = select(_T.fingerprint, _T.batch_id, _T.job_id).where(
        (_T.tenant == tenant) & (_T.idempotency_key == key.key) & (_T.created_at >= key.not_before)
    )
    row = (await conn.execute(query)).first()
    return None if row is None else KeyRecord(row.fingerprint, row.batch_id, row.job_id)
