"""A file submitted chunk by chunk: parsing in pieces, SQL and the queue per chunk, the batch sealed
at the end, and a failure mid-file leaving a cancelled batch that says where it stopped.

Every `Client.submit_chunks` test runs on both backends (fakeredis + SQLite, Redis + PostgreSQL).
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from producer.client import Client, SubmitProgress
from producer.inputs import (
    BatchItem,
    LineError,
    ParsedInput,
    parse_chunks,
    parse_line,
    parse_lines,
    parse_object,
    read_jsonl_chunks,
)
from storage.jobs import ANY_TENANT, JobStatus
from storage.sql.schema import batches, jobs
from tests.backends import Backend


def prompt(custom_id: str, text: str = "hello") -> str:
    return json.dumps({"custom_id": custom_id, "prompt": text})


def file_lines(n: int, *, bad_every: int = 0) -> list[str]:
    """n lines; every `bad_every`-th is refused (temperature out of range)."""
    lines = []
    for i in range(1, n + 1):
        if bad_every and i % bad_every == 0:
            lines.append(json.dumps({"custom_id": f"bad-{i}", "prompt": "x", "temperature": 9}))
        else:
            lines.append(prompt(f"id-{i}", f"say {i}"))
    return lines


# --- parsing in chunks ---------------------------------------------------------------------------


def test_chunks_hold_their_own_lines_and_add_up_to_parse_lines() -> None:
    lines = file_lines(10, bad_every=4)
    lines.insert(5, "   ")  # blank: skipped, still counted as a line number
    chunks = list(parse_chunks(lines, chunk_lines=3))
    assert len(chunks) == 4  # 11 lines: 3 + 3 + 3 + 2
    assert [item.line for item in chunks[1].items] == [5]  # line 4 is bad, line 6 blank
    assert [error.line for error in chunks[1].errors] == [4]
    whole = parse_lines(lines)
    assert [i for c in chunks for i in c.items] == whole.items
    assert [e for c in chunks for e in c.errors] == whole.errors


def test_a_custom_id_used_again_in_a_later_chunk_is_refused() -> None:
    lines = [prompt("a"), prompt("b"), prompt("c"), prompt("a", "again")]
    chunks = list(parse_chunks(lines, chunk_lines=2))
    assert chunks[1].errors == [LineError(4, "duplicate custom_id 'a' (first used on line 1)", "a")]


def test_an_empty_file_is_one_empty_chunk_and_a_bad_size_is_refused() -> None:
    assert list(parse_chunks([], chunk_lines=5)) == [ParsedInput()]
    with pytest.raises(ValueError, match="chunk_lines must be at least 1"):
        list(parse_chunks([], chunk_lines=0))


def test_a_file_is_read_as_its_chunks_are_asked_for() -> None:
    data = "\n".join(file_lines(6)).encode() + b"\n"
    source = io.BytesIO(data)
    chunks = read_jsonl_chunks(source, chunk_lines=2)
    assert len(next(chunks).items) == 2
    assert 0 < source.tell() < len(data)  # the rest is not read yet


# The fast path skips the walk over a line's values when its text shows none can be unstorable:
# every line that holds one must still be refused in the same words as by `parse_object`.
UNSTORABLE = [
    '{"prompt": "a\\u0000b"}',
    '{"prompt": "hi", "metadata": {"k\\u0000": "v"}}',
    '{"prompt": "hi", "metadata": {"k": "\\ud800"}}',
    '{"prompt": "hi", "temperature": NaN}',
    '{"prompt": "hi", "preferences": {"timeout_ms": 1e999}}',
    '{"prompt": "hi", "preferences": {"max_cost_usd": -Infinity}}',
    '{"prompt": "hi", "top_p": 1.5e400}',
]


@pytest.mark.parametrize("line", UNSTORABLE)
def test_every_unstorable_value_is_still_named(line: str) -> None:
    parsed = parse_line(line, 1)
    assert isinstance(parsed, LineError)
    walked = parse_object(json.loads(line, parse_constant=float), 1)
    assert isinstance(walked, LineError)
    assert parsed.reason == walked.reason


def test_a_duplicate_key_beside_a_nan_is_still_the_duplicate_key() -> None:
    parsed = parse_line('{"prompt": "a", "temperature": NaN, "prompt": "b"}', 1)
    assert isinstance(parsed, LineError)
    assert parsed.reason == "duplicate key 'prompt' in a JSON object: give each key once"


def test_an_escaped_backslash_u_is_only_text() -> None:
    parsed = parse_line('{"prompt": "C:\\\\users and 1e5 and NaNa"}', 1)
    assert isinstance(parsed, BatchItem)


# --- submitting in chunks ------------------------------------------------------------------------


async def count_batches(backend: Backend) -> int:
    async with backend.store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(batches))).scalar_one())


async def test_each_chunk_is_written_and_queued_before_the_next_is_parsed(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    produced: list[int] = []  # chunks handed out so far
    appended: list[tuple[int, int]] = []  # (chunk size, chunks handed out when it was written)

    def chunks() -> Iterator[ParsedInput]:
        for chunk in parse_chunks(file_lines(20, bad_every=7), chunk_lines=4):
            produced.append(len(chunk.items))
            yield chunk

    append = backend.store.batches.append

    async def spy(batch_id: str, items: Any, **kwargs: Any) -> list[str]:
        appended.append((len(items), len(produced)))
        return await append(batch_id, items, **kwargs)

    monkeypatch.setattr(backend.store.batches, "append", spy)
    seen: list[int] = []
    done = await client.submit_chunks(chunks(), name="big", on_chunk=lambda p: seen.append(p.queued))

    assert [size for size, _ in appended] == [4, 3, 4, 3, 4]  # lines 7 and 14 refused
    # While chunk n is written, chunk n+1 at most has been parsed: two chunks alive, whatever the file.
    assert all(handed_out <= n + 2 for n, (_, handed_out) in enumerate(appended))
    assert seen == [4, 7, 11, 14, 18]
    assert done.queued == 18
    assert done.lines_read == 20
    assert [e.line for e in done.errors] == [7, 14]
    assert done.batch_id is not None

    batch = await client.batch(done.batch_id)
    assert batch.total == 18
    assert batch.counts == {JobStatus.QUEUED: 18}
    assert [line["line"] for line in batch.invalid_lines] == [7, 14]  # the in-progress note is gone
    assert (await client.progress(done.batch_id)).total == 18
    jobs = [job async for job in client.results(done.batch_id)]
    assert [job.seq for job in jobs] == list(range(18))
    assert jobs[6].custom_id == "id-8"
    queued = await client.redis.zrange(backend.settings.queue_name, 0, -1)
    assert sorted(q.decode() for q in queued) == sorted(job.id for job in jobs)

    assert await backend.run_worker() == 18
    assert (await client.batch(done.batch_id)).status == "completed"
    assert [e.type async for e in client.events(done.batch_id)][-1] == "batch.completed"


async def test_a_file_without_a_valid_line_makes_no_batch(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    done = await client.submit_chunks(parse_chunks(['{"prompt": ""}', "not json"], chunk_lines=1))
    assert done.batch_id is None
    assert [e.line for e in done.errors] == [1, 2]
    assert await count_batches(backend) == 0


async def test_jobs_done_before_the_file_ends_complete_the_batch_at_the_end(backend: Backend) -> None:
    """The progress total is set last: finishing the first chunk's jobs does not end the batch early."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    first_written = asyncio.Event()
    go_on = threading.Event()  # the parsing thread waits on it before the end of the file

    def chunks() -> Iterator[ParsedInput]:
        yield from parse_chunks([prompt("a"), prompt("b")], chunk_lines=2)
        go_on.wait(timeout=30)

    submitting = asyncio.create_task(client.submit_chunks(chunks(), on_chunk=lambda _: first_written.set()))
    await first_written.wait()
    batch_id = (await client.store.batches.list(tenant=client.tenant, limit=1))[0].id
    assert (await client.batch(batch_id)).invalid_lines[0]["reason"].startswith("submission unfinished")

    assert await backend.run_worker() == 2
    assert (await client.batch(batch_id)).completed_at is None  # more lines may come
    go_on.set()
    done = await submitting

    batch = await client.batch(batch_id)
    assert done.batch_id == batch_id
    assert batch.completed_at is not None
    assert batch.invalid_lines == []
    assert [e.type async for e in client.events(batch_id)][-1] == "batch.completed"


async def test_a_failure_mid_file_cancels_the_batch_and_says_where(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings)
    reached: list[SubmitProgress] = []

    def chunks() -> Iterator[ParsedInput]:
        parsed = parse_chunks(file_lines(9, bad_every=5), chunk_lines=3)
        yield next(parsed)
        yield next(parsed)
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        await client.submit_chunks(chunks(), on_chunk=reached.append)

    batch_id = reached[-1].batch_id
    assert batch_id is not None
    batch = await client.batch(batch_id)
    assert batch.total == 5  # lines 1-6 but 5
    assert batch.counts == {JobStatus.CANCELLED: 5}
    assert batch.status == "cancelled"
    assert batch.invalid_lines[0]["line"] == 5
    note = batch.invalid_lines[-1]
    assert note["line"] == 7
    assert note["reason"].startswith("submission failed here (OSError: disk on fire)")
    assert await client.redis.zcard(backend.settings.queue_name) == 0


async def test_the_sweeper_leaves_a_batch_alone_while_its_file_is_submitted(backend: Backend) -> None:
    """All jobs so far finished is not the end of a batch whose file is not all in."""
    client = Client(await backend.redis(), backend.store, backend.settings)
    first = next(parse_chunks([prompt("a"), prompt("b"), prompt("c")], chunk_lines=2))
    stopped = await client.submit_chunks([first])  # as if the submitter died after this chunk
    batch_id = stopped.batch_id
    assert batch_id is not None
    far = datetime.now(UTC) + timedelta(days=1)
    # The seal above ended the submission: put back what a killed submitter leaves.
    async with backend.store.engine.begin() as conn:
        await conn.execute(update(batches).where(batches.c.id == batch_id).values(submitting=True))
        await conn.execute(update(jobs).where(jobs.c.batch_id == batch_id).values(status="succeeded"))
    assert (await backend.store.batches.get(batch_id, tenant=ANY_TENANT)).submitting
    assert batch_id not in await backend.store.batches.finalizing(created_before=far)

    # Sealed (the file all in), the batch is the sweeper's to complete.
    await backend.store.batches.seal(batch_id, [])
    assert batch_id in await backend.store.batches.finalizing(created_before=far)
