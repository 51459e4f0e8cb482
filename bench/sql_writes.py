"""SQL write groups on a SQLite file (a benchmark, not a test): the CPU of a group commit three ways.

A group here is what a worker's finishing jobs write: six INSERTs of a few rows into tables of a
dozen columns, then COMMIT, through `storage.sql.group_commit.GroupCommitter` on routeq's own
engine (aiosqlite through the one-hop driver, WAL, the PRAGMAs of `routeq worker`):
1. async writes: each statement awaited on the `AsyncConnection` (a trip to aiosqlite's thread and
   greenlet switches each), as every write ran before the writer thread;
2. plain writes through `run_sync` on the async engine: what PostgreSQL, in-memory SQLite and a
   group holding an async write do with them;
3. plain writes on the writer thread (storage/sql/writer.py): the group run whole on one thread.
Each is timed with W concurrent writers (W = 1: a group per write, as with one job in flight; W =
20: a group holds about twenty) and prints this process's CPU per group and per write, every
thread counted. The three run in turn, twice, in one process: compare within a run.

Run: `.venv/bin/python bench/sql_writes.py [--groups N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.sql.engine import create_engine
from storage.sql.group_commit import GroupCommitter
from storage.sql.writer import WriterThread

TABLES = 6
COLUMNS = 12


async def lane(write: Callable[[int], Awaitable[Any]], first: int, count: int) -> None:
    for i in range(first, first + count):
        await write(i)


async def main(groups: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
        metadata = MetaData()
        tables = [
            Table(
                f"t{n}",
                metadata,
                Column("id", Integer, primary_key=True),
                *[Column(f"c{i}", String) for i in range(COLUMNS)],
            )
            for n in range(TABLES)
        ]
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        statements = [insert(table) for table in tables]
        row = {f"c{i}": "x" * 24 for i in range(COLUMNS)}

        async def async_write(conn: AsyncConnection, items: list[int]) -> list[None]:
            for statement in statements:
                await conn.execute(statement, [row] * len(items))
            return [None] * len(items)

        def plain_write(conn: Connection, items: list[int]) -> list[None]:
            for statement in statements:
                conn.execute(statement, [row] * len(items))
            return [None] * len(items)

        writer = WriterThread(engine)
        on_engine, on_thread = GroupCommitter(engine), GroupCommitter(engine, thread=writer)
        ways: list[tuple[str, Callable[[int], Awaitable[Any]]]] = [
            ("async writes", lambda i: on_engine.run_batched(async_write, i)),
            ("plain writes, run_sync", lambda i: on_engine.run_sync_batched(plain_write, i)),
            ("plain writes, writer thread", lambda i: on_thread.run_sync_batched(plain_write, i)),
        ]
        print(f"SQLite file, groups of {TABLES} executemany INSERTs ({COLUMNS} columns) + COMMIT")
        for round_no in (1, 2):
            print(f" round {round_no}")
            for writers in (1, 20):
                for label, write in ways:
                    committers = (on_engine, on_thread)
                    before = [c.groups for c in committers]
                    cpu = time.process_time()

                    await asyncio.gather(*(lane(write, w * groups, groups) for w in range(writers)))
                    cpu = time.process_time() - cpu
                    made = sum(c.groups - b for c, b in zip(committers, before, strict=True))
                    print(
                        f"   {writers:2} writers, {label:28} {cpu / made * 1e6:8.0f} us CPU a group "
                        f"({made:,} groups), {cpu / (writers * groups) * 1e6:6.0f} us a write"
                    )
        await on_engine.close()
        await on_thread.close()
        await writer.close()
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=600, help="writes per writer, each way")
    asyncio.run(main(parser.parse_args().groups))
