"""A streamed job's pieces through Redis (storage/bus/relay.py): an append is one script call in
the turn's pipeline that also renews the stream's expiry and pings its readers; a reader woken by
those pings reads through the same pipeline. Both backends."""

from __future__ import annotations

import asyncio

from storage import keys
from storage.bus.coalesce import coalescer_for
from storage.bus.notifier import Notifier
from storage.bus.relay import StreamRelay
from storage.connections import as_text
from tests.backends import Backend
from tests.test_notifier import until


async def test_appends_expire_the_stream_ping_its_readers_and_read_back_in_order(backend: Backend) -> None:
    redis = await backend.redis()
    relay = StreamRelay(redis, retention_s=120)
    pings = redis.pubsub()
    await pings.subscribe(keys.job_chunks_added("job-r"))
    batches = coalescer_for(redis)._batcher.batches

    await asyncio.gather(
        relay.push("job-r", 1, "Hel"),
        relay.push("job-other", 1, "lo"),  # another job's append, made in the same turn
    )
    assert coalescer_for(redis)._batcher.batches == batches + 1  # one pipeline for both
    await relay.push("job-r", 1, {"index": 0, "delta": {"tool_calls": [{"index": 0}]}})
    await relay.end("job-r", 1, "succeeded")

    assert 0 < await redis.ttl(keys.job_chunks("job-r")) <= 120
    heard: list[bytes | str] = []
    async with asyncio.timeout(10):
        while len(heard) < 3:
            message = await pings.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                heard.append(message["channel"])
    assert {as_text(channel) for channel in heard} == {keys.job_chunks_added("job-r")}
    await pings.unsubscribe()

    notifier = Notifier(redis)
    reader = StreamRelay(redis, notifier=notifier)
    try:
        pieces = [piece async for piece in reader.follow("job-r")]
    finally:
        await notifier.close()
    assert [(p.run, p.text, p.delta, p.end) for p in pieces] == [
        (1, "Hel", None, None),
        (1, None, {"index": 0, "delta": {"tool_calls": [{"index": 0}]}}, None),
        (1, None, None, "succeeded"),
    ]


async def test_a_reader_woken_by_the_ping_reads_what_was_appended_after_it_began(backend: Backend) -> None:
    redis = await backend.redis()
    notifier = Notifier(redis)
    reader, writer = StreamRelay(redis, notifier=notifier), StreamRelay(redis)
    pieces = reader.follow("job-w")
    reads = coalescer_for(redis)._batcher.batches
    try:
        first = asyncio.ensure_future(anext(pieces))
        await until(lambda: coalescer_for(redis)._batcher.batches > reads)  # its first read: empty
        await writer.push("job-w", 2, "late")
        assert (await asyncio.wait_for(first, 5)).text == "late"
        await writer.end("job-w", 2, "succeeded")
        assert (await asyncio.wait_for(anext(pieces), 5)).end == "succeeded"
    finally:
        await pieces.aclose()
        await notifier.close()
