"""New jobs' rows in bulk: requests serialized once, rows bound as the driver takes them, COPY on
PostgreSQL.

A 100,000-line file is 100,000 `jobs` rows. Through SQLAlchemy's `execute(insert, [dicts])` each
row was a dict whose parameters were then constructed and type-processed one by one: about 1.5 s
of CPU per 100,000 rows on top of the database's own work. Here the statement is compiled once per
dialect, the values every row of a chunk shares (batch, tenant, user, status, time) go through
their type's bind processor once, and each row is a tuple handed to the driver's `executemany`;
on PostgreSQL the rows go in by `COPY` (asyncpg's `copy_records_to_table`) inside the same
transaction: no statement per row at all.

    encode_jobs   the CPU of a row: each request serialized (`request_json`, in `storage.jobs`, which
                  a parsing process imports without SQLAlchemy); any thread or process may do it
    job_rows      the encoded jobs as the dialect's driver binds them, each with a new id
    insert_jobs   the rows into `jobs`, in the caller's transaction

The columns not named here (the outcome and cache columns) are NULL, as SQLAlchemy's insert left them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Connection, Dialect, bindparam, insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator

from storage.jobs import EncodedJob, EncodedJobs, JobStatus, encode_jobs, new_id, request_json
from storage.sql.schema import batches, jobs

__all__ = [
    "ROW_COLUMNS",
    "EncodedJob",
    "EncodedJobs",
    "JobOwner",
    "encode_jobs",
    "insert_jobs",
    "insert_singles",
    "job_rows",
    "request_json",
]

# The order of every row tuple: the table's (SQLAlchemy compiles the INSERT in it). `request` is
# JSON serialized already (`model_dump_json`).
ROW_COLUMNS = (
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
    "api_key_id",
    "created_at",
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
    api_key_id: str | None = None  # the API key submitting them (None: the CLI, the Python client)


Row = tuple[Any, ...]
_Processor = Callable[[Any], Any] | None


def job_rows(items: EncodedJobs, owner: JobOwner, dialect: Dialect, first_seq: int = 0) -> list[Row]:
    """The `jobs` rows of `items`, status `queued`, in input order from `first_seq`, each value as
    `dialect`'s driver binds it (`insert_jobs` inserts them). Each row's id is `row[0]`."""
    bind = _compiled(dialect).processors

    def shared(name: str, value: Any) -> Any:
        processor = bind[ROW_COLUMNS.index(name)]
        return value if processor is None else processor(value)

    batch_id, tenant, user_id = (
        shared("batch_id", owner.batch_id),
        shared("tenant", owner.tenant),
        shared("user_id", owner.user_id),
    )
    status, run, starts = shared("status", JobStatus.QUEUED.value), shared("run", 0), shared("starts", 0)
    created_at = shared("created_at", owner.created_at)
    api_key_id = shared("api_key_id", owner.api_key_id)
    as_stream = bind[ROW_COLUMNS.index("stream")] or _unchanged
    as_metadata = bind[ROW_COLUMNS.index("metadata")] or _unchanged
    return [
        (
            new_id("job"),
            batch_id,
            seq,
            custom_id,
            tenant,
            user_id,
            request,
            as_stream(stream),
            status,
            run,
            starts,
            end_user,
            as_metadata(metadata),
            api_key_id,
            created_at,
        )
        for seq, (custom_id, request, stream, end_user, metadata) in enumerate(items.jobs, start=first_seq)
    ]


def _unchanged(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    processors: tuple[_Processor, ...]  # per column of `ROW_COLUMNS`


# By dialect and driver: the statement is the same for every engine of one.
_COMPILED: dict[tuple[str, str], _Compiled] = {}
# Columns `job_rows` binds as they are: a type that processes them would need a change there.
_AS_THEY_ARE = frozenset({"id", "seq", "custom_id", "request", "end_user"})


def _compiled(dialect: Dialect) -> _Compiled:
    key = (dialect.name, dialect.driver)
    found = _COMPILED.get(key)
    if found is None:
        binds = {name: bindparam(name, type_=jobs.c[name].type) for name in ROW_COLUMNS}
        binds["request"] = bindparam("request", type_=_EncodedJSON())
        compiled = insert(jobs).values(binds).compile(dialect=dialect)
        if compiled.positiontup != list(ROW_COLUMNS):  # a named paramstyle, or the table's order changed
            raise RuntimeError(
                f"the {dialect.name} INSERT binds {compiled.positiontup}, not the columns {ROW_COLUMNS}"
            )
        processors = tuple(
            binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in ROW_COLUMNS
        )
        processed = {name for name, p in zip(ROW_COLUMNS, processors, strict=True) if p is not None}
        if processed & _AS_THEY_ARE:
            raise RuntimeError(f"the {dialect.name} dialect processes {processed & _AS_THEY_ARE}")
        found = _COMPILED[key] = _Compiled(compiled.string, processors)
    return found


async def insert_jobs(conn: AsyncConnection, rows: list[Row]) -> None:
    """Insert `job_rows` output (made for this connection's dialect) in the transaction of `conn`."""
    if not rows:
        return
    if conn.dialect.name == "postgresql" and await _copy(conn, rows):
        return
    await conn.exec_driver_sql(_compiled(conn.dialect).sql, rows)


def insert_singles(conn: Connection, singles: list[tuple[dict[str, Any], Row]]) -> list[None]:
    """The batches of one queued for a group commit (a plain write): one INSERT of their batch rows
    and one of their jobs, each an executemany (never a COPY, which needs asyncpg's connection: a
    group holds a few rows). A statement per batch of one was, on SQLite, several hops to the
    driver's thread each: the largest part of a chat completion's SQL write."""
    conn.execute(batches.insert(), [batch_row for batch_row, _ in singles])
    conn.exec_driver_sql(_compiled(conn.dialect).sql, [job_row for _, job_row in singles])
    return [None] * len(singles)


async def _copy(conn: AsyncConnection, rows: list[Row]) -> bool:
    """COPY the rows on the asyncpg connection under `conn`: False (nothing done) when it is not in
    the transaction `conn` holds, so that the caller inserts them inside it instead."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if driver is None or not hasattr(driver, "copy_records_to_table") or not driver.is_in_transaction():
        return False
    await driver.copy_records_to_table(jobs.name, records=rows, columns=list(ROW_COLUMNS))
    return True
