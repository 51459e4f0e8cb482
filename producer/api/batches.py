"""The OpenAI Batch API: upload a JSONL file, run it as a batch, read its output and error files.

    POST /v1/files (purpose=batch)  ->  POST /v1/batches  ->  GET /v1/batches/{id}  ->
    GET /v1/files/{output_file_id}/content  and  GET /v1/files/{error_file_id}/content

Unlike OpenAI, every line is routed across all providers, and a bad line does not fail the batch:
it is listed in the batch's `errors` and in its error file while the other lines run. The file is
validated while `POST /v1/batches` runs, so a batch is never seen `validating`; it is created
`in_progress` (or `failed` when no line is valid). Output and error files are generated from the
jobs whenever they are read: a cancelled batch's files hold the results finished so far.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response, StreamingResponse

from producer.api.auth import Caller, Principal
from producer.api.context import ApiContext, Ctx
from producer.api.errors import ApiError
from producer.api.idempotency import IdempotencyKeyHeader, idempotency_key
from producer.api.key_models import allowed_lines
from producer.api.ratelimit import admit
from producer.api.schemas import OpenAIBatchBody
from producer.inputs import InputRules, ParsedInput, parse_lines, unstorable_values
from producer.outputs import output_line
from router_core.errors import InvalidRequestError
from storage.errors import NotFoundError
from storage.jobs import ApiBatch, BatchRecord, JobStatus, NewJob
from storage.sql.files import FileRecord
from storage.webhooks import check_url

__all__ = ["BatchLines", "batch_lines", "batch_object", "batch_status", "cancel_queued", "router"]

router = APIRouter(tags=["OpenAI Batch API"])

_WINDOWS = {"24h": timedelta(hours=24)}
_READ_CHUNK = 1024 * 1024


def _file_object(record: FileRecord, size: int | None = None) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes if size is None else size,
        "created_at": int(record.created_at.timestamp()),
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "expires_at": None if record.expires_at is None else int(record.expires_at.timestamp()),
        "status_details": None,
    }


async def _with_size(ctx: ApiContext, record: FileRecord) -> dict[str, Any]:
    """The file object with its true size: a generated file is measured by generating it, once its
    batch has finished (then kept), or each time it is asked while the batch still runs."""
    if not record.generated or record.bytes:
        return _file_object(record)
    assert record.batch_id is not None  # a generated file always names its batch
    errors = record.purpose == "batch_error"
    size = 0
    async for line in _result_lines(ctx, record, errors=errors):
        size += len(line)
    batch = await ctx.store.batches.get(record.batch_id, tenant=record.tenant)
    if batch.completed_at is not None and size:
        await ctx.store.files.set_bytes(record.id, size)
    return _file_object(record, size)


@router.post("/v1/files", summary="Upload a JSONL batch input file")
async def upload_file(
    principal: Caller,
    ctx: Ctx,
    *,
    file: Annotated[UploadFile, File(description="JSONL: one chat completion request per line.")],
    purpose: Annotated[str, Form(description="Must be `batch`.")],
    anchor: Annotated[
        str | None, Form(alias="expires_after[anchor]", description="`created_at` (with seconds).")
    ] = None,
    seconds: Annotated[
        int | None, Form(alias="expires_after[seconds]", description="Expire this long after upload.")
    ] = None,
) -> dict[str, Any]:
    if purpose != "batch":
        raise ApiError(400, f"purpose: only 'batch' files are accepted, got {purpose!r}", param="purpose")
    expires_at = _upload_expiry(anchor, seconds)
    filename = (file.filename or "upload.jsonl")[:255]
    if any(unstorable_values(filename, "filename")):
        raise ApiError(400, "filename: contains characters that are not text (NUL or a lone surrogate)")
    limit = ctx.settings.api_max_upload_bytes
    content = bytearray()
    while chunk := await file.read(_READ_CHUNK):
        content += chunk
        if len(content) > limit:
            raise ApiError(
                413, f"file: larger than {limit} bytes (ROUTEQ_API_MAX_UPLOAD_BYTES)", param="file"
            )
    record = await ctx.store.files.create(
        tenant=principal.tenant,
        user_id=principal.user,
        purpose=purpose,
        filename=filename,
        content=bytes(content),
        expires_at=expires_at,
    )
    return _file_object(record)


def _upload_expiry(anchor: str | None, seconds: int | None) -> datetime | None:
    """`expires_after` of an upload (multipart fields `expires_after[anchor]`, `[seconds]`)."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise ApiError(400, "expires_after.anchor: must be 'created_at'", param="expires_after.anchor")
    if seconds is None or not 3600 <= seconds <= 2_592_000:
        raise ApiError(
            400,
            "expires_after.seconds: must be between 3600 (1 hour) and 2592000 (30 days)",
            param="expires_after.seconds",
        )
    return datetime.now(UTC) + timedelta(seconds=seconds)


@router.get("/v1/files", summary="The tenant's files, newest first")
async def list_files(
    principal: Caller, ctx: Ctx, purpose: Annotated[str | None, Query(max_length=32)] = None
) -> dict[str, Any]:
    records = await ctx.store.files.list(tenant=principal.tenant, purpose=purpose)
    return {"object": "list", "data": [await _with_size(ctx, r) for r in records], "has_more": False}


@router.get("/v1/files/{file_id}", summary="A file's metadata")
async def get_file(file_id: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    return await _with_size(ctx, await ctx.store.files.get(file_id, tenant=principal.tenant))


@router.delete("/v1/files/{file_id}", summary="Delete a file")
async def delete_file(file_id: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    """An upload's bytes go with it; batches made from it keep their jobs. A deleted (or expired)
    file answers 404 from then on, like one that never existed."""
    await ctx.store.files.delete(file_id, tenant=principal.tenant)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/v1/files/{file_id}/content", summary="A file's content (a batch's output: JSONL by custom_id)")
async def file_content(file_id: str, principal: Caller, ctx: Ctx) -> Response:
    record, content = await ctx.store.files.read(file_id, tenant=principal.tenant)
    if record.batch_id is None:
        return Response(content, media_type="application/jsonl")
    errors = record.purpose == "batch_error"
    return StreamingResponse(_result_lines(ctx, record, errors=errors), media_type="application/jsonl")


async def _result_lines(ctx: ApiContext, file: FileRecord, *, errors: bool) -> AsyncIterator[bytes]:
    """The batch's output (succeeded jobs) or error (the rest, and rejected lines) file, as JSONL."""
    assert file.batch_id is not None  # a generated file always names its batch
    async for line in batch_lines(ctx, file.batch_id, file.tenant, "errors" if errors else "output"):
        yield line


# Which of a batch's lines a download holds: every finished job, the succeeded ones (the output
# file), or the rest and the rejected input lines (the error file).
BatchLines = Literal["results", "output", "errors"]


async def batch_lines(ctx: ApiContext, batch_id: str, tenant: str, kind: BatchLines) -> AsyncIterator[bytes]:
    """A batch's finished jobs as output lines (JSONL, in input order): all of them (`results`), the
    succeeded ones (`output`), or the others and the rejected input lines (`errors`)."""
    errors = kind == "errors"
    if errors:
        batch = await ctx.store.batches.get(batch_id, tenant=tenant)
        for bad in batch.invalid_lines:
            line = {
                "id": None,
                "custom_id": bad.get("custom_id"),
                "response": None,
                "error": {
                    "code": "invalid_request",
                    "message": f"line {bad.get('line')}: {bad.get('reason')}",
                },
            }
            yield (json.dumps(line, ensure_ascii=False) + "\n").encode()
    async for job in ctx.store.jobs.iter(batch_id, tenant=tenant, terminal_only=True):
        if kind == "results" or (job.status == JobStatus.SUCCEEDED) != errors:
            yield (json.dumps(output_line(job), ensure_ascii=False) + "\n").encode()


def batch_object(batch: BatchRecord, tokens: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """A batch in the OpenAI Batch shape, with its status derived from its jobs; `tokens` are the
    input and output tokens its calls used (`Batches.token_usage`)."""
    failed_jobs = batch.counts.get(JobStatus.FAILED, 0) + batch.counts.get(JobStatus.CANCELLED, 0)
    rejected = len(batch.invalid_lines)
    status = batch_status(batch)
    created = int(batch.created_at.timestamp())
    ended = None if batch.completed_at is None else int(batch.completed_at.timestamp())
    terminal = status in {"completed", "failed", "cancelled", "expired"}
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint or "/v1/chat/completions",
        "errors": _errors(batch) if rejected else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window or "24h",
        "status": status,
        "output_file_id": batch.output_file_id if terminal else None,
        "error_file_id": batch.error_file_id if terminal else None,
        "created_at": created,
        "in_progress_at": created if batch.total else None,
        "expires_at": None if batch.expires_at is None else int(batch.expires_at.timestamp()),
        "finalizing_at": ended if batch.total else None,
        "completed_at": ended if status == "completed" else None,
        "failed_at": ended if status == "failed" else None,
        "expired_at": ended if status == "expired" else None,
        "cancelling_at": None if batch.cancelled_at is None else int(batch.cancelled_at.timestamp()),
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": {
            "total": batch.total + rejected,
            "completed": batch.counts.get(JobStatus.SUCCEEDED, 0),
            "failed": failed_jobs + rejected,
        },
        "metadata": batch.metadata,
        "usage": {
            "input_tokens": tokens[0],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens[1],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens[0] + tokens[1],
        },
    }


async def _batch(ctx: ApiContext, batch_id: str, tenant: str) -> dict[str, Any]:
    """The batch as `batch_object` shapes it, with its token usage."""
    batch = await ctx.store.batches.get(batch_id, tenant=tenant)
    return batch_object(batch, (await ctx.store.batches.token_usage([batch_id]))[batch_id])


def batch_status(batch: BatchRecord) -> str:
    """The batch's status word as the OpenAI Batch API says it (`in_progress`, `completed`...)."""
    if batch.total == 0:
        return "failed"
    if batch.done < batch.total:
        return "in_progress" if batch.cancelled_at is None else "cancelling"
    if batch.completed_at is None:
        return "finalizing"  # the last job is committed; the batch is being marked complete
    if batch.cancelled_at is not None:
        return "cancelled"
    if batch.expires_at is not None and batch.completed_at > batch.expires_at:
        return "expired"
    return "completed"


def _errors(batch: BatchRecord) -> dict[str, Any]:
    data = [
        {"code": "invalid_request", "message": str(bad.get("reason")), "param": None, "line": bad.get("line")}
        for bad in batch.invalid_lines
    ]
    return {"object": "list", "data": data}


@router.post("/v1/batches", summary="Run an uploaded file as a batch, each line routed across providers")
async def create_batch(
    body: OpenAIBatchBody, principal: Caller, ctx: Ctx, idempotency: IdempotencyKeyHeader = None
) -> dict[str, Any]:
    if problems := list(unstorable_values(body.metadata or {}, "metadata")):
        raise ApiError(400, "; ".join(problems), param="metadata")
    webhook_url = _webhook_url(body.metadata)
    key = idempotency_key(idempotency, "/v1/batches", body.model_dump(mode="json"), ctx.settings)
    await admit(ctx, principal)
    client = ctx.client(principal.tenant, principal.user, principal.key_id)
    if key is not None and (earlier := await ctx.store.idempotency.find(principal.tenant, key)):
        await client.enqueue(earlier)  # what a Redis error left unqueued the first time
        return await _batch(ctx, earlier.batch_id, principal.tenant)
    record, content = await ctx.store.files.read(body.input_file_id, tenant=principal.tenant)
    if content is None:  # a batch's generated output or error file is not an input
        raise NotFoundError("file", body.input_file_id)
    if record.purpose != "batch":
        raise ApiError(400, f"input_file_id: {record.id} is a {record.purpose} file, not a batch input")
    # Parsing 50,000 lines takes seconds of CPU: in a thread, so every other request keeps being answered.
    parsed = await asyncio.to_thread(_parse_file, content, ctx.settings.api_max_batch_lines, ctx.rules)
    parsed = allowed_lines(parsed, principal, ctx.catalog)
    created = await client.create(
        [NewJob(item.custom_id, item.request) for item in parsed.items],
        name=record.filename,
        invalid_lines=[{"line": e.line, "reason": e.reason, "custom_id": e.custom_id} for e in parsed.errors],
        api=ApiBatch(
            endpoint=body.endpoint,
            input_file_id=record.id,
            completion_window=body.completion_window,
            expires_at=datetime.now(UTC) + _WINDOWS[body.completion_window],
            metadata=body.metadata,
            output_expires_s=None if body.output_expires_after is None else body.output_expires_after.seconds,
        ),
        idempotency=key,
        webhook_url=webhook_url,
    )
    await client.enqueue(created)
    return await _batch(ctx, created.batch_id, principal.tenant)


def _webhook_url(metadata: dict[str, str] | None) -> str | None:
    """`metadata.webhook_url`, checked: the URL the batch's webhook events go to (see webhooks.py)."""
    url = (metadata or {}).get("webhook_url")
    if url is None:
        return None
    try:
        return check_url(url, field="metadata.webhook_url")
    except InvalidRequestError as exc:
        raise ApiError(400, str(exc), param=exc.field) from None


def _parse_file(content: bytes, limit: int, rules: InputRules) -> ParsedInput:
    """A batch input file's requests and rejected lines (CPU only: run it off the event loop)."""
    lines = content.decode("utf-8", errors="surrogateescape").splitlines()
    if len(lines) > limit:
        raise ApiError(
            400, f"input_file_id: {len(lines)} lines, more than {limit} (ROUTEQ_API_MAX_BATCH_LINES)"
        )
    return parse_lines(lines, rules)


@router.get("/v1/batches/{batch_id}", summary="A batch: status, request counts, output and error files")
async def get_batch(batch_id: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    return await _batch(ctx, batch_id, principal.tenant)


@router.get("/v1/batches", summary="The tenant's batches, newest first")
async def list_batches(
    principal: Caller,
    ctx: Ctx,
    after: Annotated[
        str | None, Query(max_length=64, description="Last batch id of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    # Batches only: not the batch of one each chat completion or job runs as, nor message batches.
    page = await ctx.store.batches.list(tenant=principal.tenant, after=after, kind="batch", limit=limit + 1)
    more = len(page) > limit
    shown = page[:limit]
    tokens = await ctx.store.batches.token_usage([b.id for b in shown])
    data = [batch_object(b, tokens[b.id]) for b in shown]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch: queued lines stop, finished ones stay")
async def cancel_batch(batch_id: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    await cancel_queued(ctx, principal, batch_id)
    return await _batch(ctx, batch_id, principal.tenant)


async def cancel_queued(ctx: ApiContext, principal: Principal, batch_id: str) -> None:
    """Cancel the principal's batch (its queued jobs; running ones finish); a finished batch stays as it
    is. The API's cancel route and the dashboard's cancel form both come here.

    Raises:
        NotFoundError: no such batch, or another tenant's.
    """
    batch = await ctx.store.batches.get(batch_id, tenant=principal.tenant)
    if batch.done < batch.total:
        await ctx.client(principal.tenant, principal.user).cancel(batch_id)
