"""`POST /v1/chat/completions`: one routed chat completion, answered in the OpenAI shape.

The body is the Chat Completions language (tools, response_format, n, user, metadata...: see
`schemas.ChatFields`); a field no deployment it may use honours is a 400 naming it. The request
becomes a job (a batch of one) on the same queue the workers read. The API then waits for the job's
completion ping (no polling) and reads the outcome from SQL: every choice, as OpenAI shapes it.
With `"stream": true` (only for one choice: `n` > 1 is a 400) the worker relays the provider's text
and tool-call deltas through Redis (storage.bus.relay) and the API passes each piece on as an
OpenAI `chat.completion.chunk` server-sent event.

How it was routed comes back in headers (`x-routeq-deployment`, `-attempts`, `-cost-usd`,
`-failovers`, `-job-id`, and `x-routeq-cache`: `hit`, `miss` or `off`) and in the body's extra
`routeq` field (the last chunk's, when streamed), which also says whether the answer came from the
response cache (`cache_hit`, `cache_source_job`, `cache_similarity`, `saved_usd`). The
`Server-Timing` header says how long each step of the API's own path took (producer/api/timing.py).
Once the job exists every answer names it, errors too (a 503 when Redis blinks, a 504 past the
wait): with the same `Idempotency-Key` a retry gets that job's answer, not a second job.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from pydantic_core import to_json

from producer.api.auth import BEARER_SECURITY, Caller, Principal, request_caller
from producer.api.context import ApiContext, Ctx
from producer.api.errors import (
    FAILURE_STATUS,
    INFRASTRUCTURE_ERRORS,
    ApiError,
    error_body,
    first_field,
    unavailable,
)
from producer.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from producer.api.idempotency import HEADER_PARAMETER, idempotency_key
from producer.api.key_models import allowed_request, visible_models
from producer.api.ratelimit import admit, request_tokens
from producer.api.schemas import ChatCompletionBody
from producer.api.stopping import ServerStopping, stopping_error, stopping_message
from producer.api.timing import Stages
from producer.chat_body import reference_problem
from producer.client import Client
from producer.inputs import parse_chat_body
from producer.outputs import cache_state, completion_body, openai_usage, routing_metadata
from producer.planning import plan_view
from router_core.errors import InvalidRequestError
from router_core.models import ChatRequest, Strategy
from router_core.planner import check_references
from storage import keys
from storage.bus.notifier import Signal
from storage.bus.relay import Piece
from storage.jobs import CreatedBatch, FailureCode, JobFailure, JobRecord, JobStatus

__all__ = ["ROUTE", "first_piece", "job_failure", "router", "wait_timeout"]

router = APIRouter(tags=["OpenAI-compatible"])

ROUTE = "/v1/chat/completions"


def job_failure(job: JobRecord) -> ApiError:
    """The error answer for a job that did not succeed: its failure code and that code's status."""
    failure = job.failure or JobFailure(FailureCode.UNKNOWN, f"the job ended {job.status.value}")
    status = FAILURE_STATUS[failure.code]
    return ApiError(
        status, failure.message, code=failure.code.value, headers=_routing_headers(job), job_id=job.id
    )


def _routing_headers(job: JobRecord) -> dict[str, str]:
    headers = {"x-routeq-job-id": job.id, "x-routeq-attempts": str(job.attempt_count or 0)}
    headers["x-routeq-cost-usd"] = f"{float(job.cost_usd or 0):.10f}"
    headers["x-routeq-failovers"] = str(job.failovers or 0)
    headers["x-routeq-cache"] = cache_state(job)
    if job.deployment:
        headers["x-routeq-deployment"] = job.deployment
    return headers


def _request(body: ChatCompletionBody, ctx: ApiContext) -> ChatRequest:
    return checked_request(body.model_dump(exclude_unset=True, mode="json"), ctx)


def checked_request(fields: dict[str, Any], ctx: ApiContext) -> ChatRequest:
    """A chat completion body as a request the catalog can serve, or the 400/404 naming the field."""
    request, problems = parse_chat_body(fields, ctx.settings.request_limits())
    if request is None:
        message = "; ".join(problems)
        raise ApiError(400, message, param=first_field(message), code="invalid_request")
    try:
        check_references(request, ctx.catalog)  # the planner's own check, before a job is queued
    except InvalidRequestError as exc:
        if exc.field == "model":
            message = f"model {request.model!r} is not served here: GET /v1/models lists what is"
            raise ApiError(404, message, param="model", code="model_not_found") from None
        # A field no deployment honours: tools, response_format, image parts in messages...
        field, reason = reference_problem(exc)
        message = f"{field}: {reason}" if field else reason
        raise ApiError(400, message, param=field, code="invalid_request") from None
    return request


def _models(ctx: ApiContext, principal: Principal) -> list[dict[str, Any]]:
    """What `model` accepts: auto, router:<strategy>, every deployment id and served model name
    (those the key may use, when it is limited to some)."""
    names = ["auto", *(f"router:{s.value}" for s in Strategy), *ctx.catalog]
    names += sorted({d.model for d in ctx.catalog.values()} - set(names))
    names = visible_models(names, principal, ctx.catalog)
    owners = {d.id: d.provider for d in ctx.catalog.values()} | {
        d.model: d.provider for d in ctx.catalog.values()
    }
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": owners.get(name, "routeq")}
        for name in names
    ]


@router.get("/v1/models", summary="Models a request may name: auto, router:<strategy>, deployments")
async def list_models(principal: Caller, ctx: Ctx) -> dict[str, Any]:
    return {"object": "list", "data": _models(ctx, principal)}


@router.get("/v1/models/{model:path}", summary="One model a request may name")
async def get_model(model: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    for entry in _models(ctx, principal):
        if entry["id"] == model:
            return entry
    raise ApiError(
        404,
        f"model {model!r} is not served here: GET /v1/models lists them",
        param="model",
        code="model_not_found",
    )


@router.post("/v1/route", summary="Route without running: the plan a worker would follow now")
async def route(body: ChatCompletionBody, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    """The same body as a chat completion; nothing is queued and no provider is called. The answer
    lists the candidates in the order a worker would try them (estimated cost and latency, score,
    the quality used and on how many samples) and every excluded deployment with its reason;
    `routable: false` when none is left."""
    request = allowed_request(_request(body, ctx), principal, ctx.catalog)
    await admit(ctx, principal)
    # Resolved as the job would be (Client.create): the preview names the strategy a worker uses.
    request = await ctx.strategies.resolve(request, principal.tenant)
    return plan_view(await ctx.planner.preview(request, ctx.catalog))


# The route reads its caller, body and Idempotency-Key header itself (`request_caller`, `_chat_body`)
# rather than through FastAPI's dependencies, which cost the busiest route about a tenth of its CPU;
# they are declared here for the OpenAPI document ("422": the app's document makes it the 400 it is).
_CHAT_OPENAPI: dict[str, Any] = {
    "security": BEARER_SECURITY,
    "parameters": [HEADER_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionBody"}}},
    },
    "responses": {"422": {"description": "Validation Error"}},
}


@router.post(
    ROUTE, summary="Create a routed chat completion", response_model=None, openapi_extra=_CHAT_OPENAPI
)
async def chat_completions(http: Request) -> JSONResponse | StreamingResponse:
    stages = Stages()
    principal, ctx = await request_caller(http)  # first: a request without a key is a 401, body or not
    stages.lap("auth")
    body = await _chat_body(http)
    idempotency = http.headers.get(IDEMPOTENCY_HEADER)
    if body.stream and (body.n or 1) > 1:
        # Each chunk carries one choice here: n answers would need n streams relayed at once.
        message = "n > 1 cannot be streamed; ask without stream or with n=1"
        raise ApiError(400, message, param="n", code="invalid_request")
    request = allowed_request(_request(body, ctx), principal, ctx.catalog)
    limits = await admit(
        ctx, principal, tokens=request_tokens(request, ctx.settings.default_completion_tokens)
    )
    stages.lap("admit")
    client = ctx.client(principal.tenant, principal.user, principal.key_id)
    key = None
    if idempotency is not None:  # the body's JSON dump is the key's fingerprint: only made for one
        key = idempotency_key(
            idempotency, ROUTE, body.model_dump(exclude_unset=True, mode="json"), ctx.settings
        )
    # The job exists from here on (or an earlier request with the key made it): every answer names it.
    # parse_chat_body checked what check_storable would (unstorable values, the size limits).
    created = await client.create_single(request, stream=body.stream, idempotency=key, checked=True)
    stages.lap("store")
    job_id = created.job_ids[0]
    if body.stream:
        try:
            await client.enqueue(created)
            stages.lap("enqueue")
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await _stream(ctx, client, job_id, request, include_usage=include_usage, stages=stages)
        except INFRASTRUCTURE_ERRORS as exc:
            raise unavailable(exc, job_id=job_id) from exc
    job = await run_and_wait(ctx, client, created, stages)
    return AnswerResponse(_answer(job), headers=_routing_headers(job) | limits | stages.header())


async def _chat_body(http: Request) -> ChatCompletionBody:
    """The body, read and validated as FastAPI does a `ChatCompletionBody` parameter: JSON when the
    content type says so (a JSON type is required), every problem a `RequestValidationError` (the
    400 naming the field)."""
    raw = await http.body()
    content: Any = None
    if raw and _is_json(http.headers.get("content-type", "")):
        try:
            content = json.loads(raw)
        except json.JSONDecodeError as exc:
            loc, ctx = ("body", exc.pos), {"error": exc.msg}
            error = {"type": "json_invalid", "loc": loc, "msg": "JSON decode error", "input": {}, "ctx": ctx}
            raise RequestValidationError([error], body=exc.doc) from None
        except UnicodeDecodeError:
            raise ApiError(400, "the body is not UTF-8 JSON", code="invalid_request") from None
    elif raw:
        content = raw  # not JSON: refused as FastAPI refuses it (not an object)
    if content is None:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing], body=None)
    try:
        return ChatCompletionBody.model_validate(content, from_attributes=True)  # as FastAPI validates
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=content) from None


class AnswerResponse(JSONResponse):
    """A JSON answer written by pydantic-core, about four times as fast as Starlette's `json.dumps`
    (the same compact UTF-8); a non-finite number is null where `json.dumps` would raise."""

    def render(self, content: Any) -> bytes:
        return to_json(content, inf_nan_mode="null")


def _is_json(content_type: str) -> bool:
    kind, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


async def run_and_wait(ctx: ApiContext, client: Client, created: CreatedBatch, stages: Stages) -> JobRecord:
    """Queue a one-job batch and wait for its job to succeed; an error answer naming the job if it
    failed, did not finish within ROUTEQ_API_WAIT_TIMEOUT_S, or Redis or SQL would not answer.
    `stages` gets the `enqueue`, `job`, `read` and `route` steps (`producer.api.timing`)."""
    job_id = created.job_ids[0]
    try:
        # Watched before it is queued: the job cannot finish unseen, and is read once, when done.
        async with client.notifier.watch(keys.job_done_channel(job_id)) as done:
            await client.enqueue(created)
            stages.lap("enqueue")
            async with ctx.stopping.waiting(ctx.settings.api_wait_timeout_s):
                # A replayed request's job (its idempotency key) may be finished already: read it now.
                job = await _finished(client, job_id, done, stages, woken_first=not created.replayed)
    except TimeoutError:
        raise wait_timeout(ctx, job_id) from None
    except INFRASTRUCTURE_ERRORS as exc:
        raise unavailable(exc, job_id=job_id) from exc
    if job.status != JobStatus.SUCCEEDED:
        raise job_failure(job)
    if job.latency_ms is not None:
        stages.add("route", job.latency_ms / 1000)
    return job


async def _finished(
    client: Client, job_id: str, done: Signal, stages: Stages, *, woken_first: bool
) -> JobRecord:
    """`Client.wait`'s loop (the job read from SQL, again at each wake-up, until it is finished),
    timed: `job` until the read that found it finished began (a wake-up for nothing, as at a
    resubscription, counts there), `read` that read."""
    if woken_first:
        await done.wait()
    while True:
        reading = stages.now()
        job = await client.get(job_id)
        if job.terminal:
            stages.lap("job", at=reading)
            stages.lap("read")
            return job
        await done.wait()


def wait_timeout(ctx: ApiContext, job_id: str) -> ApiError:
    """The 504 for a job that did not finish (or start answering) within the API's wait
    (ROUTEQ_API_WAIT_TIMEOUT_S, cut short when the server stops: `Stopping.waiting`); the 503
    naming the job when the wait was cut short because the server is stopping."""
    if ctx.stopping.begun:
        return stopping_error(job_id)
    return ApiError(
        504,
        f"job {job_id} did not finish within {ctx.settings.api_wait_timeout_s:g}s "
        f"(ROUTEQ_API_WAIT_TIMEOUT_S); it keeps running: GET /v1/jobs/{job_id}",
        type_="timeout",
        code="wait_timeout",
        job_id=job_id,
    )


def _answer(job: JobRecord) -> dict[str, Any]:
    return completion_body(job) | {"routeq": routing_metadata(job)}


# -- streaming -----------------------------------------------------------------------------------


async def first_piece(
    ctx: ApiContext, client: Client, job_id: str, stages: Stages
) -> tuple[Piece, AsyncGenerator[Piece, None]]:
    """The streamed job's first relayed piece and the pieces after it. A job that ends before its
    first piece without an answer, or no piece within the API's wait, is a plain HTTP error: no
    stream has begun yet. The pieces after it raise `ServerStopping` if the server stops first.
    `stages` gets the `first` step: until the first piece came."""
    pieces = ctx.relay.follow(job_id)
    try:
        async with ctx.stopping.waiting(ctx.settings.api_wait_timeout_s):
            first = await anext(pieces)
    except TimeoutError:
        await pieces.aclose()
        raise wait_timeout(ctx, job_id) from None
    if first.end is not None:
        await pieces.aclose()
        job = await client.get(job_id)
        if job.status != JobStatus.SUCCEEDED:
            raise job_failure(job)
    stages.lap("first")
    return first, ctx.stopping.follow(pieces)  # a stream under way ends when the server stops


async def _stream(
    ctx: ApiContext,
    client: Client,
    job_id: str,
    request: ChatRequest,
    *,
    include_usage: bool,
    stages: Stages,
) -> JSONResponse | StreamingResponse:
    """Wait for the first piece; an error before it is a plain HTTP error, after it an SSE error."""
    first, pieces = await first_piece(ctx, client, job_id, stages)
    chunks = _ChunkWriter(job_id, request.model, include_usage)
    return StreamingResponse(
        _events(client, job_id, chunks, first, pieces),
        media_type="text/event-stream",
        headers={"x-routeq-job-id": job_id, "cache-control": "no-cache"} | stages.header(),
    )


class _ChunkWriter:
    """Formats `chat.completion.chunk` server-sent events for one job."""

    def __init__(self, job_id: str, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{job_id}"
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        return self.choice({"index": 0, "delta": delta, "finish_reason": finish_reason}, **extra)

    def choice(self, choice: dict[str, Any], **extra: Any) -> str:
        return self._event({"choices": [{"finish_reason": None, **choice}], **extra})

    def _event(self, fields: dict[str, Any]) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }
        return f"data: {json.dumps(body | fields, separators=(',', ':'))}\n\n"

    def final(self, job: JobRecord) -> list[str]:
        """The closing chunk (finish reason, routing), the usage chunk if asked, and [DONE]."""
        result = job.result or {}
        self.model = str(result.get("model") or self.model)
        events = [self.chunk({}, str(result.get("finish_reason") or "stop"), routeq=routing_metadata(job))]
        if self.include_usage:
            events.append(self._event({"choices": [], "usage": openai_usage(result)}))
        return [*events, "data: [DONE]\n\n"]


def _sse_error(message: str, code: str) -> str:
    return f"data: {json.dumps(error_body(message, type_='stream_error', code=code))}\n\n"


async def _events(
    client: Client, job_id: str, chunks: _ChunkWriter, first: Piece, pieces: AsyncGenerator[Piece, None]
) -> AsyncIterator[str]:
    """The SSE body: role, text pieces of one run, then the final chunks (or an error event)."""
    try:
        yield chunks.chunk({"role": "assistant", "content": ""})
        piece, run = first, first.run
        while piece.end is None:
            if piece.run != run:
                # The worker died mid-answer and the job is running again: what was sent stands.
                yield _sse_error(
                    "the worker streaming this answer stopped; the text above is partial", "interrupted"
                )
                return
            if piece.text:
                yield chunks.chunk({"content": piece.text})
            elif piece.delta is not None:
                # Tool-call pieces and the like, as the provider's chunk choice; the finish
                # reason comes once, with the final chunk.
                yield chunks.choice({k: v for k, v in piece.delta.items() if k != "finish_reason"})
            try:
                piece = await anext(pieces)
            except ServerStopping:
                yield _sse_error(stopping_message(job_id), "server_stopping")
                return
        job = await client.get(job_id)
        if job.status == JobStatus.SUCCEEDED:
            for event in chunks.final(job):
                yield event
        else:
            failure = job_failure(job)
            yield _sse_error(failure.message, failure.code or "failed")
    finally:
        await pieces.aclose()
