"""Vector index benchmark (a benchmark, not a test): `nearest` over 10,000 cached embeddings.

For each store given (default: an in-memory SQLite and a SQLite file; add PostgreSQL with
--database-url), N jobs (default 10,000) each get a random vector of D floats (default 256), added
500 at a time as workers would; then it prints the first search (the index copies the rows in, or
builds) and the mean of 100 searches after (k=4), each of which must find its own vector first.
A PostgreSQL database given has its `cache_vectors` rows deleted before and after.

Run: `.venv/bin/python bench/vectors.py [--database-url postgresql+asyncpg://...] [--vectors N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time

from sqlalchemy import delete

from router_core.models import ChatRequest, Message
from storage.jobs import NewJob
from storage.sql.schema import cache_vectors
from storage.sql.store import Store
from storage.sql.vectors import VectorEntry, VectorIndex, open_vector_index

GROUP = "g" * 64
EMBEDDER = "bench-embed"


async def fill(store: Store, index: VectorIndex, n: int, dims: int) -> list[list[float]]:
    rng = random.Random(1)
    request = ChatRequest(messages=[Message(role="user", content="hi")])
    created = await store.batches.create(
        [NewJob(f"q{i}", request) for i in range(n)], tenant="acme", user_id="u"
    )
    vectors = [[rng.gauss(0, 1) for _ in range(dims)] for _ in created.job_ids]
    for start in range(0, n, 500):
        pairs = zip(created.job_ids[start : start + 500], vectors[start : start + 500], strict=True)
        await asyncio.gather(*(index.add(VectorEntry(job, "acme", GROUP, EMBEDDER, v)) for job, v in pairs))
    return vectors


async def measure(url: str, n: int, dims: int) -> str:
    store = await Store.open(url)
    if store.engine.dialect.name == "postgresql":
        async with store.engine.begin() as conn:
            await conn.execute(delete(cache_vectors))
    index = await open_vector_index(store)
    try:
        vectors = await fill(store, index, n, dims)
        started = time.perf_counter()
        await index.nearest("acme", GROUP, EMBEDDER, vectors[0])
        first_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        for vector in vectors[:100]:
            best = (await index.nearest("acme", GROUP, EMBEDDER, vector, k=4))[0]
            if best.similarity < 0.99:
                raise SystemExit(f"{index.name}: a vector did not find itself first")
        each_ms = (time.perf_counter() - started) * 1000 / 100
    finally:
        await index.close()
        if store.engine.dialect.name == "postgresql":
            async with store.engine.begin() as conn:
                await conn.execute(delete(cache_vectors))
        await store.close()
    first = f"first search {first_ms:7.0f} ms (copies in / builds)"
    return f"   {index.name:<11} {first}; then {each_ms:6.2f} ms a search"


async def run(args: argparse.Namespace, tmp: str) -> None:
    urls = {"in-memory SQLite": "sqlite+aiosqlite://", "SQLite file": f"sqlite+aiosqlite:///{tmp}/bench.db"}
    if args.database_url:
        urls["PostgreSQL"] = args.database_url
    print(f"{args.vectors:,} vectors of {args.dims} floats, k=4, 100 searches each")
    for label, url in urls.items():
        print(f"{label}:")
        print(await measure(url, args.vectors, args.dims))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=None, help="also a PostgreSQL database")
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--dims", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="routeq-bench-") as tmp:
        asyncio.run(run(args, tmp))


if __name__ == "__main__":
    main()
