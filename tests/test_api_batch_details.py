"""OpenAI Batch API details, with the official openai SDK as the client: files that are deleted or
expire, the generated files' true sizes, token usage on the batch, and `batches.list` paged
exactly as the SDK pages (its auto-pager follows `after` = the last id while `has_more`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import openai
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.sql.schema import attempts, files, jobs
from tests.api_harness import serve_api
from tests.backends import Backend
from tests.test_api_batches import finished, jsonl, line


async def _upload(client: openai.AsyncOpenAI, n: int) -> str:
    lines = [line(f"q-{i}", f"Question number {i}?", max_tokens=20) for i in range(n)]
    uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return uploaded.id


async def _expire(backend: Backend, file_id: str) -> None:
    """Move a file's expiry into the past (the clock the API reads is the wall clock).

    Through the store's group committer, as every write of the API and the worker: on in-memory
    SQLite they share one connection, and a transaction begun beside theirs (the engine's own
    `begin()`) could run inside one of them and be rolled back with it.
    """
    past = datetime.now(UTC) - timedelta(seconds=1)

    async def write(conn: AsyncConnection) -> None:
        await conn.execute(update(files).where(files.c.id == file_id).values(expires_at=past))

    await backend.store.db.writes.run(write)


async def test_files_are_deleted_and_expire_as_the_sdk_asks(backend: Backend) -> None:
    async with serve_api(backend) as api:
        client = api.openai(await api.key("acme"))
        other = api.openai(await api.key("other"))
        kept = await _upload(client, 1)
        short = await client.files.create(
            file=("short.jsonl", jsonl([line("a", "hi")])),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
        assert short.expires_at is not None
        assert 3590 <= short.expires_at - short.created_at <= 3610

        with pytest.raises(openai.NotFoundError):  # another tenant's file is not found, nor deleted
            await other.files.delete(kept)
        deleted = await client.files.delete(kept)
        assert (deleted.id, deleted.deleted) == (kept, True)
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(kept)
        with pytest.raises(openai.NotFoundError):
            await client.files.delete(kept)

        await _expire(api.backend, short.id)
        with pytest.raises(openai.NotFoundError):
            await client.files.content(short.id)
        assert [f.id for f in (await client.files.list()).data] == []

        with pytest.raises(openai.BadRequestError, match=r"expires_after\.seconds"):
            await client.files.create(
                file=("x.jsonl", jsonl([line("a", "hi")])),
                purpose="batch",
                expires_after={"anchor": "created_at", "seconds": 60},
            )


async def test_a_batch_reports_usage_true_file_sizes_and_output_expiry(backend: Backend) -> None:
    async with serve_api(backend) as api:
        client = api.openai(await api.key("acme"))
        created = await client.batches.create(
            input_file_id=await _upload(client, 5),
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 7200},
        )
        batch = await finished(client, created.id)
        assert batch.usage is not None
        tokens_in, tokens_out = await _tokens(api.backend, batch.id)
        assert batch.usage.input_tokens == tokens_in > 0
        assert batch.usage.output_tokens == tokens_out > 0
        assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens

        assert batch.output_file_id is not None
        content = (await client.files.content(batch.output_file_id)).content
        output = await client.files.retrieve(batch.output_file_id)
        assert output.bytes == len(content) > 0
        assert output.expires_at is not None
        assert 7190 <= output.expires_at - output.created_at <= 7210
        await _expire(api.backend, batch.output_file_id)
        with pytest.raises(openai.NotFoundError):
            await client.files.content(batch.output_file_id)

        with pytest.raises(openai.BadRequestError):
            await client.batches.create(
                input_file_id=await _upload(client, 1),
                endpoint="/v1/chat/completions",
                completion_window="24h",
                output_expires_after={"anchor": "created_at", "seconds": 10},
            )


async def test_batches_list_pages_as_the_sdk_pages(backend: Backend) -> None:
    async with serve_api(backend) as api:
        client = api.openai(await api.key("acme"))
        made = []
        for n in range(5):
            batch = await client.batches.create(
                input_file_id=await _upload(client, 1),
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            made.append(batch.id)
            if n == 2:  # a chat completion runs as a batch of one: not a batch this list shows
                await client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": "hi"}]
                )
        first = await client.batches.list(limit=2)
        assert [b.id for b in first.data] == made[::-1][:2]
        assert first.has_more
        assert first.has_next_page()
        seen = [b.id async for b in client.batches.list(limit=2)]  # the SDK's auto-pager
        assert seen == made[::-1]
        last = await client.batches.list(limit=2, after=made[1])
        assert [b.id for b in last.data] == [made[0]]
        assert not last.has_more


async def _tokens(backend: Backend, batch_id: str) -> tuple[int, int]:
    """The batch's input and output tokens, summed from its attempts here."""
    query = select(attempts.c.input_tokens, attempts.c.output_tokens).select_from(attempts.join(jobs))
    async with backend.store.reading() as conn:
        rows = (await conn.execute(query.where(jobs.c.batch_id == batch_id))).all()
    return sum(r.input_tokens or 0 for r in rows), sum(r.output_tokens or 0 for r in rows)
