"""Files of the OpenAI Batch API: uploaded batch inputs, and each batch's output and error files.

An upload's bytes are kept in SQL (`files.content`): the HTTP API bounds their size, and a batch
made from the file reads it once. A batch's output and error files are rows without content; their
JSONL is generated from the batch's jobs whenever it is read, so it is always current (partial
results of a cancelled batch included) and never stored twice. Their size is measured once their
batch has finished, and kept (`set_bytes`).

A file with `expires_at` in the past is gone: every read answers `NotFoundError`, as for a deleted
file, and listings leave it out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import NotFoundError
from storage.jobs import aware, new_id
from storage.sql.database import Database
from storage.sql.schema import files

__all__ = ["FileRecord", "Files"]

_LIST_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    tenant: str
    user_id: str
    purpose: str  # batch (an upload), batch_output or batch_error (generated)
    filename: str
    bytes: int
    batch_id: str | None
    created_at: datetime
    expires_at: datetime | None = None

    @property
    def generated(self) -> bool:
        """True for a batch's output or error file, whose content comes from its jobs."""
        return self.batch_id is not None


_COLUMNS = (
    files.c.id,
    files.c.tenant,
    files.c.user_id,
    files.c.purpose,
    files.c.filename,
    files.c.bytes,
    files.c.batch_id,
    files.c.created_at,
    files.c.expires_at,
)


def _record(row: Mapping[Any, Any]) -> FileRecord:
    values = dict(row)
    values["created_at"] = aware(values["created_at"])
    values["expires_at"] = aware(values["expires_at"])
    return FileRecord(**values)


def _live(file_id: str, tenant: str) -> ColumnElement[bool]:
    """The tenant's file `file_id`, unless it has expired."""
    return (files.c.id == file_id) & (files.c.tenant == tenant) & _unexpired()


def _unexpired() -> ColumnElement[bool]:
    return files.c.expires_at.is_(None) | (files.c.expires_at > datetime.now(UTC))


class Files:
    """Create and read files, always within one tenant: another tenant's file is `NotFoundError`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        *,
        tenant: str,
        user_id: str,
        purpose: str,
        filename: str,
        content: bytes,
        expires_at: datetime | None = None,
    ) -> FileRecord:
        record = FileRecord(
            id=new_id("file"),
            tenant=tenant,
            user_id=user_id,
            purpose=purpose,
            filename=filename,
            bytes=len(content),
            batch_id=None,
            created_at=datetime.now(UTC),
            expires_at=expires_at,
        )
        row = {**dataclasses.asdict(record), "content": content}

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(files.insert(), row)

        await self._db.writes.run(write)
        return record

    async def get(self, file_id: str, *, tenant: str) -> FileRecord:
        """The file's metadata. Raises `NotFoundError` if it does not exist in `tenant`."""
        query = select(*_COLUMNS).where(_live(file_id, tenant))
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError("file", file_id)
        return _record(row._mapping)

    async def read(self, file_id: str, *, tenant: str) -> tuple[FileRecord, bytes | None]:
        """The file's metadata and, for an upload, its bytes (None for a generated file), in one read.

        Raises `NotFoundError` if it does not exist in `tenant`.
        """
        query = select(*_COLUMNS, files.c.content).where(_live(file_id, tenant))
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError("file", file_id)
        values = dict(row._mapping)
        content = values.pop("content")
        return _record(values), None if content is None else bytes(content)

    async def list(
        self, *, tenant: str, purpose: str | None = None, limit: int = _LIST_LIMIT
    ) -> list[FileRecord]:
        """The tenant's files, newest first."""
        query = select(*_COLUMNS).where((files.c.tenant == tenant) & _unexpired())
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        query = query.order_by(files.c.created_at.desc(), files.c.id).limit(limit)
        async with self._db.reading() as conn:
            return [_record(row._mapping) for row in await conn.execute(query)]

    async def delete(self, file_id: str, *, tenant: str) -> None:
        """Delete the file (an upload's bytes with it). Raises `NotFoundError` if it is not there.

        A batch made from an upload keeps its jobs; a batch whose output file is deleted answers
        404 for it, as for any file that is gone.
        """
        gone = 0

        async def write(conn: AsyncConnection) -> None:
            nonlocal gone
            gone = (await conn.execute(delete(files).where(_live(file_id, tenant)))).rowcount

        await self._db.writes.run(write)
        if not gone:
            raise NotFoundError("file", file_id)

    async def set_bytes(self, file_id: str, size: int) -> None:
        """Record a generated file's size, measured once its batch has finished."""

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(update(files).where(files.c.id == file_id).values(bytes=size))

        await self._db.writes.run(write)
