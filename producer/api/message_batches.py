"""The Anthropic Message Batches API, as the anthropic SDK calls it (`client.messages.batches`):

    POST   /v1/messages/batches                  {"requests": [{"custom_id", "params"}]} -> message_batch
    GET    /v1/messages/batches/{id}             the batch: processing_status, request_counts, results_url
    GET    /v1/messages/batches                  newest first; after_id / before_id / limit, has_more,
                                                 first_id, last_id (the SDK's auto-pagination)
    POST   /v1/messages/batches/{id}/cancel      queued requests end canceled, running ones finish
    DELETE /v1/messages/batches/{id}             an ended batch only
    GET    /v1/messages/batches/{id}/results     JSONL, a line per request: succeeded (the message),
                                                 errored (an Anthropic error), canceled or expired

A message batch is a routeq batch of kind `messages`: its requests are jobs on the same queue, routed
across every provider, with the progress, cancel and expiry paths of any batch (24 hours, as
Anthropic's). Each request's `params` is checked like a `POST /v1/messages` body (`message_request`)
before anything is stored; the first bad ones are a 400 naming the request's index, its custom_id
and the field. The counts are live (Anthropic shows the finished ones only once the batch ends).
Another tenant's batch, and a batch of another kind, are 404s like an id that never existed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from producer.anthropic_stream import error_type
from producer.anthropic_wire import message_object
from producer.api.auth import Caller, Principal
from producer.api.context import ApiContext, Ctx
from producer.api.errors import FAILURE_STATUS, ApiError
from producer.api.idempotency import IdempotencyKeyHeader, idempotency_key
from producer.api.messages import message_request
from producer.api.ratelimit import admit
from storage.errors import NotFoundError
from storage.jobs import BatchRecord, FailureCode, JobRecord, JobStatus, NewJob

__all__ = ["KIND", "router"]

router = APIRouter(tags=["Anthropic-compatible"])

KIND = "messages"  # the batches.kind of a message batch
_ROUTE = "/v1/messages/batches"
_WINDOW = timedelta(hours=24)
_CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHOWN_PROBLEMS = 10  # a bad batch's 400 names this many requests at most


# -- the message_batch object --------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    """RFC 3339 in UTC, as Anthropic writes it (`2026-11-30T18:37:24.100435Z`)."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def batch_object(batch: BatchRecord, failures: dict[FailureCode, int]) -> dict[str, Any]:
    """The batch as a `message_batch`; `failures` are its failed jobs by code (expired ones apart)."""
    expired = failures.get(FailureCode.BATCH_EXPIRED, 0)
    ended = batch.completed_at is not None
    status = "ended" if ended else "in_progress" if batch.cancelled_at is None else "canceling"
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": batch.total - batch.done,
            "succeeded": batch.counts.get(JobStatus.SUCCEEDED, 0),
            "errored": batch.counts.get(JobStatus.FAILED, 0) - expired,
            "canceled": batch.counts.get(JobStatus.CANCELLED, 0),
            "expired": expired,
        },
        "created_at": _time(batch.created_at),
        "ended_at": _time(batch.completed_at),
        "expires_at": _time(batch.expires_at or batch.created_at + _WINDOW),
        "cancel_initiated_at": _time(batch.cancelled_at),
        "archived_at": None,
        # A path, which the SDK joins to its base URL (a routeq behind a proxy cannot know its own).
        "results_url": f"{_ROUTE}/{batch.id}/results" if ended else None,
    }


async def _message_batch(ctx: ApiContext, batch_id: str, tenant: str) -> BatchRecord:
    """The tenant's message batch; `NotFoundError` for any other id (another tenant's, another kind)."""
    try:
        batch = await ctx.store.batches.get(batch_id, tenant=tenant)
    except NotFoundError:
        raise NotFoundError("message batch", batch_id) from None
    if batch.kind != KIND:
        raise NotFoundError("message batch", batch_id)
    return batch


async def _answer(ctx: ApiContext, batch: BatchRecord) -> dict[str, Any]:
    return batch_object(batch, (await ctx.store.batches.failure_counts([batch.id]))[batch.id])


# -- creating --------------------------------------------------------------------------------------


def _jobs(raw: bytes, ctx: ApiContext, principal: Principal) -> list[NewJob]:
    """Each request of the body as a job, or the 400 naming the first bad ones (index, custom_id,
    field). CPU only: run it off the event loop."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the body is not JSON", code="invalid_request") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object with requests", code="invalid_request")
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise ApiError(400, "requests: expected a non-empty list of requests", param="requests")
    limit = ctx.settings.api_max_batch_lines
    if len(requests) > limit:
        message = f"requests: {len(requests)} requests, more than {limit} (ROUTEQ_API_MAX_BATCH_LINES)"
        raise ApiError(400, message, param="requests")
    items: list[NewJob] = []
    problems: list[tuple[str, str]] = []  # (field, problem)
    seen: dict[str, int] = {}
    for n, entry in enumerate(requests):
        try:
            items.append(_job(n, entry, seen, ctx, principal))
        except ApiError as exc:
            problems.append((exc.param or f"requests.{n}", exc.message))
            if len(problems) == _SHOWN_PROBLEMS:
                break
    if problems:
        raise ApiError(
            400, "; ".join(message for _, message in problems), param=problems[0][0], code="invalid_request"
        )
    return items


def _job(n: int, entry: Any, seen: dict[str, int], ctx: ApiContext, principal: Principal) -> NewJob:
    where = f"requests.{n}"
    if not isinstance(entry, dict):
        raise ApiError(400, f"{where}: expected an object with custom_id and params", param=where)
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
        message = f"{where}.custom_id: expected 1 to 64 letters, digits, '_' or '-', got {custom_id!r}"
        raise ApiError(400, message, param=f"{where}.custom_id")
    if custom_id in seen:
        message = f"{where}.custom_id: {custom_id!r} is the custom_id of requests.{seen[custom_id]} too"
        raise ApiError(400, message, param=f"{where}.custom_id")
    seen[custom_id] = n
    where = f"{where} (custom_id {custom_id!r})"
    params = entry.get("params")
    if not isinstance(params, dict):
        message = f"{where}: params: expected an object (a POST /v1/messages body)"
        raise ApiError(400, message, param=f"requests.{n}.params")
    try:
        request, stream = message_request(params, ctx, principal)
    except ApiError as exc:
        field = f"requests.{n}.params" + (f".{exc.param}" if exc.param else "")
        raise ApiError(400, f"{where}: params.{exc.message}", param=field) from None
    if stream:
        message = f"{where}: params.stream: a batch request cannot be streamed"
        raise ApiError(400, message, param=f"requests.{n}.params.stream")
    return NewJob(custom_id, request)


@router.post(_ROUTE, summary="Create a message batch, each request routed across providers")
async def create_message_batch(
    request: Request, principal: Caller, ctx: Ctx, idempotency: IdempotencyKeyHeader = None
) -> dict[str, Any]:
    """With an `Idempotency-Key` (the SDK's `extra_headers`), a retry of the same body gets the
    first request's batch."""
    raw = await request.body()
    # The body's hash stands for it: a retry sends the same bytes, and 16 MiB need not be re-encoded.
    key = idempotency_key(idempotency, _ROUTE, hashlib.sha256(raw).hexdigest(), ctx.settings)
    await admit(ctx, principal)
    client = ctx.client(principal.tenant, principal.user, principal.key_id)
    if key is not None and (earlier := await ctx.store.idempotency.find(principal.tenant, key)):
        await client.enqueue(earlier)  # what a Redis error left unqueued the first time
        return await _answer(ctx, await _message_batch(ctx, earlier.batch_id, principal.tenant))
    # Checking 100,000 requests takes seconds of CPU: in a thread, so other requests keep being answered.
    items = await asyncio.to_thread(_jobs, raw, ctx, principal)
    expires = datetime.now(UTC) + _WINDOW
    created = await client.create(items, kind=KIND, expires_at=expires, idempotency=key)
    await client.enqueue(created)
    return await _answer(ctx, await _message_batch(ctx, created.batch_id, principal.tenant))


# -- reading, cancelling, deleting ----------------------------------------------------------------


@router.get(f"{_ROUTE}/{{batch_id}}", summary="A message batch: processing status, request counts")
async def get_message_batch(batch_id: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    return await _answer(ctx, await _message_batch(ctx, batch_id, principal.tenant))


@router.get(_ROUTE, summary="The tenant's message batches, newest first")
async def list_message_batches(
    principal: Caller,
    ctx: Ctx,
    after_id: Annotated[
        str | None, Query(max_length=64, description="Page after (older than) this batch.")
    ] = None,
    before_id: Annotated[
        str | None, Query(max_length=64, description="Page before (newer than) this batch.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, Any]:
    if after_id is not None and before_id is not None:
        raise ApiError(400, "after_id and before_id: give one cursor, not both", param="before_id")
    page = await ctx.store.batches.list(
        tenant=principal.tenant, after=after_id, before=before_id, kind=KIND, limit=limit + 1
    )
    more = len(page) > limit
    # The extra batch read (is there more?) lies beyond the page: the oldest, or before a cursor the newest.
    shown = page[1:] if more and before_id is not None else page[:limit]
    failures = await ctx.store.batches.failure_counts([batch.id for batch in shown])
    data = [batch_object(batch, failures[batch.id]) for batch in shown]
    return {
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.post(f"{_ROUTE}/{{batch_id}}/cancel", summary="Cancel a message batch: queued requests end canceled")
async def cancel_message_batch(batch_id: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    batch = await _message_batch(ctx, batch_id, principal.tenant)
    if batch.completed_at is None:
        await ctx.client(principal.tenant, principal.user).cancel(batch_id)
        batch = await _message_batch(ctx, batch_id, principal.tenant)
    return await _answer(ctx, batch)


@router.delete(f"{_ROUTE}/{{batch_id}}", summary="Delete an ended message batch")
async def delete_message_batch(batch_id: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    """Its results go with it (404 from then on); the cost ledger keeps what its requests cost."""
    await _message_batch(ctx, batch_id, principal.tenant)
    if not await ctx.store.batches.delete(batch_id, tenant=principal.tenant):
        message = f"message batch {batch_id} is still processing: cancel it, and delete it once it has ended"
        raise ApiError(400, message, param="message_batch_id", code="invalid_request")
    return {"id": batch_id, "type": "message_batch_deleted"}


# -- results ---------------------------------------------------------------------------------------


def result_line(job: JobRecord) -> dict[str, Any]:
    """One finished request as a line of the results file."""
    result: dict[str, Any]
    failure = job.failure
    if job.status == JobStatus.SUCCEEDED:
        result = {"type": "succeeded", "message": message_object(job)}
    elif job.status == JobStatus.CANCELLED:
        result = {"type": "canceled"}
    elif failure is not None and failure.code == FailureCode.BATCH_EXPIRED:
        result = {"type": "expired"}
    else:
        code = failure.code if failure is not None else FailureCode.UNKNOWN
        message = failure.message if failure is not None else f"the request ended {job.status.value}"
        error = {"type": error_type(FAILURE_STATUS[code]), "message": message}
        result = {"type": "errored", "error": {"type": "error", "error": error}}
    return {"custom_id": job.custom_id, "result": result}


@router.get(f"{_ROUTE}/{{batch_id}}/results", summary="An ended message batch's results, as JSONL")
async def message_batch_results(batch_id: str, principal: Caller, ctx: Ctx) -> StreamingResponse:
    batch = await _message_batch(ctx, batch_id, principal.tenant)
    if batch.completed_at is None:
        message = f"message batch {batch_id} is still processing: its results_url is set once it has ended"
        raise ApiError(400, message, param="message_batch_id", code="invalid_request")

    async def lines() -> AsyncIterator[bytes]:
        async for job in ctx.store.jobs.iter(batch_id, tenant=principal.tenant, terminal_only=True):
            yield (json.dumps(result_line(job), ensure_ascii=False) + "\n").encode()

    # What the SDK asks for (Accept: application/binary) and decodes line by line.
    return StreamingResponse(lines(), media_type="application/binary")
