"""routeq's own job routes: submit one prompt, read a job, page a batch's jobs, follow events (SSE).

Events come from the batch's Redis stream (storage.bus.events) as server-sent events whose `id` is
the stream id: a client that reconnects with `Last-Event-ID` (or `?after=`) misses nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from producer.api.auth import Caller
from producer.api.context import Ctx
from producer.api.errors import INFRASTRUCTURE_ERRORS, ApiError, first_field, unavailable
from producer.api.idempotency import IdempotencyKeyHeader, idempotency_key
from producer.api.key_models import allowed_request
from producer.api.ratelimit import admit, request_tokens
from producer.api.schemas import JobBody
from producer.inputs import LineError, parse_object, unstorable_values
from producer.outputs import metadata_filter, openai_choices, routing_metadata
from storage import keys
from storage.bus.events import EventBus, JobEvent
from storage.jobs import TERMINAL, JobRecord, JobStatus

__all__ = ["job_view", "router"]

router = APIRouter(tags=["Jobs"])

_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
# A comment line this often keeps proxies from closing a quiet event stream.
_KEEPALIVE_MS = 15_000


def job_view(job: JobRecord, attempts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A job as the API shows it: status, its request's `user` and `metadata`, result (every choice
    as OpenAI shapes it, and the first one's text), routing, cost, and (for one job) every attempt."""
    result = job.result or {}
    view: dict[str, Any] = {
        "id": job.id,
        "object": "routeq.job",
        "batch_id": job.batch_id,
        "custom_id": job.custom_id,
        "status": job.status.value,
        "model": job.model,
        "user": job.end_user,
        "metadata": job.metadata,
        "result": None
        if job.status != JobStatus.SUCCEEDED
        else {
            "content": result.get("content"),
            "finish_reason": result.get("finish_reason"),
            "choices": openai_choices(result),
            "usage": result.get("usage"),
        },
        "error": job.error,
        "routeq": routing_metadata(job),
        "created_at": int(job.created_at.timestamp()),
        "started_at": None if job.started_at is None else int(job.started_at.timestamp()),
        "finished_at": None if job.finished_at is None else int(job.finished_at.timestamp()),
    }
    if attempts is not None:
        view["attempts"] = [_attempt_view(a) for a in attempts]
    return view


def _attempt_view(row: dict[str, Any]) -> dict[str, Any]:
    fields = ("run", "attempt_no", "deployment", "provider", "model", "outcome", "error_class", "error")
    view = {name: row[name] for name in fields}
    view |= {
        "status_code": row["status_code"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "latency_ms": row["latency_ms"],
        "wait_ms": row["wait_ms"],
        "simulated": row["simulated"],
    }
    return view


@router.post("/v1/jobs", status_code=202, summary="Queue one prompt")
async def create_job(
    body: JobBody, principal: Caller, ctx: Ctx, idempotency: IdempotencyKeyHeader = None
) -> dict[str, Any]:
    """Queue one prompt (the short form of a batch line); poll `GET /v1/jobs/{id}` or its events."""
    fields = body.model_dump(exclude_none=True, mode="json")
    item = parse_object(fields, rules=ctx.rules)
    if isinstance(item, LineError):
        raise ApiError(400, item.reason, param=first_field(item.reason), code="invalid_request")
    request = allowed_request(item.request, principal, ctx.catalog)
    await admit(ctx, principal, tokens=request_tokens(request, ctx.settings.default_completion_tokens))
    client = ctx.client(principal.tenant, principal.user, principal.key_id)
    key = idempotency_key(idempotency, "/v1/jobs", fields, ctx.settings)
    created = await client.create_single(request, custom_id=body.custom_id or "request", idempotency=key)
    job_id = created.job_ids[0]
    try:
        await client.enqueue(created)
        return job_view(await ctx.store.jobs.get(job_id, tenant=principal.tenant))
    except INFRASTRUCTURE_ERRORS as exc:
        raise unavailable(exc, job_id=job_id) from exc


@router.get("/v1/jobs/{job_id}", summary="A job: status, result, attempts and cost")
async def get_job(job_id: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    job = await ctx.store.jobs.get(job_id, tenant=principal.tenant)
    return job_view(job, await ctx.store.jobs.attempts(job.id, tenant=principal.tenant))


@router.get("/v1/batches/{batch_id}/jobs", summary="A batch's jobs, in input order, a page at a time")
async def list_batch_jobs(
    batch_id: str,
    principal: Caller,
    ctx: Ctx,
    *,
    after: Annotated[
        int, Query(ge=-1, description="Position (seq) of the last job of the previous page.")
    ] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Annotated[JobStatus | None, Query()] = None,
    metadata: Annotated[
        list[str] | None,
        Query(
            max_length=16,
            description="Only jobs whose request `metadata` holds this pair, written `<key>=<value>` "
            "(split at the first `=`: a key holds no `=`, a value may); repeat it for several pairs, "
            "all of which must match. Example: `?metadata=team=search&metadata=env=prod`.",
        ),
    ] = None,
) -> dict[str, Any]:
    pairs = _metadata_pairs(metadata or [])
    await ctx.store.batches.get(batch_id, tenant=principal.tenant)
    page = await ctx.store.jobs.page(
        batch_id, tenant=principal.tenant, after_seq=after, limit=limit + 1, status=status, metadata=pairs
    )
    more = len(page) > limit
    page = page[:limit]
    return {
        "object": "list",
        "data": [job_view(job) | {"seq": job.seq} for job in page],
        "has_more": more,
        "next_after": page[-1].seq if more else None,
    }


def _metadata_pairs(filters: list[str]) -> dict[str, str]:
    """The `?metadata=<key>=<value>` filters as pairs; one that is not a pair is a 400."""
    try:
        pairs = metadata_filter(filters)
    except ValueError as exc:
        raise ApiError(400, f"metadata: {exc}", param="metadata") from None
    if problems := list(unstorable_values(pairs, "metadata")):
        raise ApiError(400, "; ".join(problems), param="metadata")
    return pairs


def _resume_from(last_event_id: str | None, after: str | None) -> str:
    value = (last_event_id or after or "0-0").strip()
    if not _STREAM_ID.match(value):
        raise ApiError(
            400,
            f"Last-Event-ID must be a stream id such as 1700000000000-0, got {value!r}",
            param="Last-Event-ID",
        )
    return value


async def _sse(bus: EventBus, batch_id: str, after: str, job_id: str | None) -> AsyncIterator[str]:
    """Events after `after` as SSE; ends with the batch's completion (or the job's own event)."""
    while True:
        events = await bus.read(batch_id, after=after, block_ms=_KEEPALIVE_MS)
        if not events:
            yield ": keep-alive\n\n"
        for event in events:
            after = event.id
            if job_id is not None and event.data.get("job_id") != job_id:
                continue
            yield f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"
            if event.type == "batch.completed" or (job_id is not None and event.type.startswith("job.")):
                return


def _event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers={"cache-control": "no-cache"})


LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", description="Resume after this event id.")]
After = Annotated[str | None, Query(description="Resume after this event id (as Last-Event-ID).")]


@router.get("/v1/jobs/{job_id}/events", summary="The job's events (SSE), resumable")
async def job_events(
    job_id: str, principal: Caller, ctx: Ctx, last_event_id: LastEventId = None, after: After = None
) -> StreamingResponse:
    start = _resume_from(last_event_id, after)
    job = await ctx.store.jobs.get(job_id, tenant=principal.tenant)
    if job.terminal and not await ctx.redis.exists(keys.batch_events(job.batch_id)):
        # The stream outlived its retention: the outcome is still in SQL, so say it and end.
        event = JobEvent.from_record(job)
        return _event_stream(_once(f"job.{event.status}", json.loads(event.data())))
    bus = EventBus(ctx.redis, retention_s=ctx.settings.event_retention_s)
    return _event_stream(_sse(bus, job.batch_id, start, job.id))


@router.get("/v1/batches/{batch_id}/events", summary="The batch's events (SSE), resumable")
async def batch_events(
    batch_id: str, principal: Caller, ctx: Ctx, last_event_id: LastEventId = None, after: After = None
) -> StreamingResponse:
    start = _resume_from(last_event_id, after)
    batch = await ctx.store.batches.get(batch_id, tenant=principal.tenant)
    if batch.completed_at is not None and not await ctx.redis.exists(keys.batch_events(batch_id)):
        counts = {status.value: batch.counts.get(status, 0) for status in TERMINAL}
        data = {"total": batch.total, "done": batch.done, **counts}
        return _event_stream(_once("batch.completed", data))
    bus = EventBus(ctx.redis, retention_s=ctx.settings.event_retention_s)
    return _event_stream(_sse(bus, batch_id, start, None))


async def _once(kind: str, data: dict[str, Any]) -> AsyncIterator[str]:
    """One final event rebuilt from SQL (no id: there is no stream left to resume)."""
    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
