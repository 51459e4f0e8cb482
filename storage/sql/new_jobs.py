"""New jobs' rows in bulk: built as tuples, bound by the driver itself, COPY on PostgreSQL.

A 100,000-line file is 100,000 `jobs` rows. Through SQLAlchemy's `execute(insert, [dicts])` each
row is a dict, then has its parameters constructed and type-processed one by one: about 3 s of CPU
per 100,000 rows, more than the database's own work. Here the statement is compiled once per
dialect, the values every row of a chunk shares (batch, tenant, user, status, time) go through
their type's bind processor once, and each row is a tuple handed to the driver's `executemany`.
On PostgreSQL the rows go in by `COPY` (asyncpg's `copy_records_to_table`) inside the same
transaction: no statement per row at all.

The columns not named here (the outcome and cache columns) are NULL, as SQLAlchemy's insert left them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import JSON, Dialect, bindparam, insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator

from storage.jobs import JobStatus, NewJob, new_id
from storage.sql.schema import jobs

__all__ = ["EncodedJob", "EncodedJobs", "JobOwner", "encode_jobs", "insert_jobs", "job_rows"]

# The order of every row tuple: the table's (SQLAlchemy compiles the INSERT in it). `request` is
# JSON serialized already (`model_dump_json`).
_COLUMNS = (
    "id",
    "batch_id",
    "seq",
    "custom_id",
    "tenant",
    "user_id",
    "request",
    "stream",
    "status",
    "run",
    "starts",
    "end_user",
    "metadata",
    "created_at",
)
# The columns every row of one insert shares (`JobOwner`, status, run).
_SHARED = frozenset(
    _COLUMNS.index(name)
    for name in ("batch_id", "tenant", "user_id", "status", "run", "starts", "created_at")
)


class _EncodedJSON(TypeDecorator[str]):
    """A JSON column's value serialized already: bound as it is, cast to JSON where the driver casts.

    A request is serialized by pydantic in one call (`model_dump_json`), where dumping it to Python
    objects and then through `json.dumps` took about three times as long.
    """

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


@dataclass(frozen=True, slots=True)
class JobOwner:
    """What every job of one insert shares."""

    batch_id: str
    tenant: str
    user_id: str
    created_at: datetime


Row = tuple[Any, ...]
_Processor = Callable[[Any], Any] | None


class EncodedJob(NamedTuple):
    """A `NewJob` as its row stores it: the request serialized, its `user` and `metadata` copied out."""

    custom_id: str
    request: str  # JSON
    stream: bool
    end_user: str | None
    metadata: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class EncodedJobs:
    """New jobs encoded ahead (`encode_jobs`), e.g. in the thread that parsed them."""

    jobs: list[EncodedJob]

    def __len__(self) -> int:
        return len(self.jobs)


def encode_jobs(items: Iterable[NewJob]) -> EncodedJobs:
    """Serialize each request (`model_dump_json`, defaults left out): the CPU a new row costs."""
    return EncodedJobs(
        [
            EncodedJob(
                item.custom_id,
                item.request.model_dump_json(exclude_defaults=True),
                item.stream,
                item.request.user,
                item.request.metadata,
            )
            for item in items
        ]
    )


def job_rows(items: EncodedJobs, owner: JobOwner, first_seq: int = 0) -> list[Row]:
    """The `jobs` rows of `items`, status `queued`, in input order from `first_seq` (values as
    Python has them: `insert_jobs` binds them). Each row's id is `row[0]`."""
    queued = JobStatus.QUEUED.value
    return [
        (
            new_id("job"),
            owner.batch_id,
            seq,
            custom_id,
            owner.tenant,
            owner.user_id,
            request,
            stream,
            queued,
            0,
            0,
            end_user,
            metadata,
            owner.created_at,
        )
        for seq, (custom_id, request, stream, end_user, metadata) in enumerate(items.jobs, start=first_seq)
    ]


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    processors: tuple[_Processor, ...]  # per column of `_COLUMNS`


_COMPILED: dict[str, _Compiled] = {}  # by dialect name: the statement is the same for every engine


def _compiled(dialect: Dialect) -> _Compiled:
    found = _COMPILED.get(dialect.name)
    if found is None:
        binds = {name: bindparam(name, type_=jobs.c[name].type) for name in _COLUMNS}
        binds["request"] = bindparam("request", type_=_EncodedJSON())
        compiled = insert(jobs).values(binds).compile(dialect=dialect)
        if compiled.positiontup != list(_COLUMNS):  # a named paramstyle, or the table's order changed
            raise RuntimeError(
                f"the {dialect.name} INSERT binds {compiled.positiontup}, not the columns {_COLUMNS}"
            )
        sql = compiled.string
        processors = tuple(
            binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in _COLUMNS
        )
        found = _COMPILED[dialect.name] = _Compiled(sql, processors)
    return found


async def insert_jobs(conn: AsyncConnection, rows: list[Row]) -> None:
    """Insert `job_rows` output in the transaction of `conn`."""
    if not rows:
        return
    compiled = _compiled(conn.dialect)
    bound = _bound(rows, compiled.processors)
    if conn.dialect.name == "postgresql" and await _copy(conn, bound):
        return
    await conn.exec_driver_sql(compiled.sql, bound)


def _bound(rows: list[Row], processors: tuple[_Processor, ...]) -> list[Row]:
    """`rows` with each value as its column type binds it; a value every row shares is bound once."""
    first = rows[0]
    shared = {
        index: processor(first[index])
        for index, processor in enumerate(processors)
        if processor is not None and index in _SHARED
    }
    per_row = [
        (index, processor)
        for index, processor in enumerate(processors)
        if processor is not None and index not in shared
    ]
    if not shared and not per_row:
        return rows
    bound = []
    for row in rows:
        values = list(row)
        for index, value in shared.items():
            values[index] = value
        for index, processor in per_row:
            values[index] = processor(values[index])
        bound.append(tuple(values))
    return bound


async def _copy(conn: AsyncConnection, rows: list[Row]) -> bool:
    """COPY the rows on the asyncpg connection under `conn`: False (nothing done) when it is not in
    the transaction `conn` holds, so that the caller inserts them inside it instead."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if driver is None or not hasattr(driver, "copy_records_to_table") or not driver.is_in_transaction():
        return False
    await driver.copy_records_to_table(jobs.name, records=rows, columns=list(_COLUMNS))
    return True
