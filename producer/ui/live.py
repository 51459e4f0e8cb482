"""Live pages: server-sent snapshots of a batch (its page) and of the batches on a list page.

Each event is a small JSON snapshot (`views.batch_snapshot`: status word, counts, cost) sent when it
changed. A batch's stream wakes on the batch's own event stream in Redis (storage.bus.events: every
finished job appends to it) and at least every second; it sends the first snapshot at once and ends
after the one that says the batch ended. The list's stream looks every second at the batches the
page shows that had not ended, and ends when none is left.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi.responses import StreamingResponse

from producer.api.auth import Principal
from producer.api.context import ApiContext
from producer.ui.views import batch_figures
from storage import keys
from storage.bus.events import EventBus
from storage.connections import as_text
from storage.errors import NotFoundError

__all__ = ["batch_stream", "batches_stream", "event_stream"]

_WAKE_MS = 1_000  # a snapshot at least this often, events or not
_MIN_GAP_S = 0.2  # and at most five a second however fast jobs finish


def event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"}
    )


def _event(data: dict[str, Any], kind: str = "snapshot") -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def batch_stream(ctx: ApiContext, principal: Principal, batch_id: str) -> AsyncIterator[str]:
    """Snapshots of one batch until it ends (the caller checked that the batch is the principal's)."""
    bus = EventBus(ctx.redis, retention_s=ctx.settings.event_retention_s)
    # Only what happens after the first snapshot wakes the loop: the snapshot covers the past.
    last_event = await ctx.redis.xrevrange(keys.batch_events(batch_id), count=1)
    after = as_text(last_event[0][0]) if last_event else "0-0"
    last: dict[str, Any] | None = None
    while True:
        snapshot = await batch_figures(ctx, principal, batch_id)
        if snapshot != last:
            yield _event(snapshot)
            last = snapshot
        else:
            yield ": keep-alive\n\n"
        if snapshot["ended"]:
            return
        events = await bus.read(batch_id, after=after, block_ms=_WAKE_MS)
        if events:
            after = events[-1].id
            await asyncio.sleep(_MIN_GAP_S)


async def batches_stream(
    ctx: ApiContext, principal: Principal, batch_ids: Sequence[str]
) -> AsyncIterator[str]:
    """Snapshots of the listed batches (ids not the principal's are skipped) until all have ended."""
    watching = list(dict.fromkeys(batch_ids))
    last: dict[str, dict[str, Any]] = {}
    while True:
        still: list[str] = []
        sent = False
        for batch_id in watching:
            try:
                snapshot = await batch_figures(ctx, principal, batch_id)
            except NotFoundError:
                continue
            if snapshot != last.get(batch_id):
                yield _event(snapshot)
                last[batch_id] = snapshot
                sent = True
            if not snapshot["ended"]:
                still.append(batch_id)
        if not still:
            yield _event({"ended": True}, "end")
            return
        if not sent:
            yield ": keep-alive\n\n"
        watching = still
        await asyncio.sleep(_WAKE_MS / 1000)
