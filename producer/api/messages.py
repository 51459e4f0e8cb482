"""The Anthropic Messages API: `POST /v1/messages`, so code written for the anthropic SDK points at
routeq unchanged (`Anthropic(base_url=..., api_key=<routeq key>)`) and is routed across every
provider. The body is translated (`producer.anthropic_wire`) and checked like a chat completion
(`message_request`, also what each request of a message batch goes through), rate-limited and run
as one job; the answer is Anthropic's `message`.

With `stream: true` the job is queued as a streamed one and the worker relays the provider's
pieces through Redis (`storage.bus.relay`, as for chat completions); each is passed on at once as
the Messages API's events (`producer.anthropic_stream`), which the SDK's stream helpers accumulate
as usual. A failure before the first piece is a plain HTTP error, after it an `error` event.
Errors have the statuses of chat completions (the SDK raises its `BadRequestError`,
`RateLimitError`... by status) and routeq's error body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from producer.anthropic_stream import MessageStream, error_event
from producer.anthropic_wire import MessagesBodyError, chat_body, message_object
from producer.api.auth import BEARER_SECURITY, Principal, request_caller
from producer.api.chat import AnswerResponse, checked_request, first_piece, job_failure, run_and_wait
from producer.api.context import ApiContext
from producer.api.errors import INFRASTRUCTURE_ERRORS, ApiError, unavailable
from producer.api.key_models import allowed_request
from producer.api.ratelimit import admit, request_tokens
from producer.api.stopping import ServerStopping, stopping_message
from producer.api.timing import Stages
from producer.client import Client
from producer.outputs import routing_metadata
from router_core.models import ChatRequest
from storage.bus.relay import Piece
from storage.jobs import JobStatus

__all__ = ["ROUTE", "message_request", "router"]

router = APIRouter(tags=["Anthropic-compatible"])


def message_request(body: Any, ctx: ApiContext, principal: Principal) -> tuple[ChatRequest, bool]:
    """A Messages API body as a request the catalog can serve within the key's allowed models, and
    whether it asks to be streamed; otherwise the 400 (404 for a model not served, 403 for one the
    key may not use) naming the field as the client sent it."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_request")
    if "max_tokens" not in body:
        raise ApiError(400, "max_tokens: Field required", param="max_tokens", code="invalid_request")
    try:
        fields = chat_body(body)
    except MessagesBodyError as exc:
        raise ApiError(400, str(exc), param=exc.field, code="invalid_request") from None
    stream = bool(fields.pop("stream", False))
    return allowed_request(checked_request(fields, ctx), principal, ctx.catalog), stream


ROUTE = "/v1/messages"


# Served past FastAPI's routing, as chat completions are (producer/api/direct.py): the route reads
# its caller itself (`request_caller`) and declares the bearer scheme for the OpenAPI document.
@router.post(
    ROUTE,
    summary="Create a routed message (the Anthropic Messages API)",
    response_model=None,
    openapi_extra={"security": BEARER_SECURITY},
)
async def create_message(request: Request) -> JSONResponse | StreamingResponse:
    stages = Stages()
    principal, ctx = await request_caller(request)  # first: a request without a key is a 401
    stages.lap("auth")
    try:
        body: Any = json.loads(await request.body())
    except ValueError:
        raise ApiError(400, "the body is not JSON", code="invalid_request") from None
    chat, stream = message_request(body, ctx, principal)
    await admit(ctx, principal, tokens=request_tokens(chat, ctx.settings.default_completion_tokens))
    stages.lap("admit")
    client = ctx.client(principal.tenant, principal.user, principal.key_id)
    # checked_request (parse_chat_body) checked what check_storable would, as for chat completions.
    created = await client.create_single(chat, stream=stream, checked=True)
    stages.lap("store")
    if stream:
        job_id = created.job_ids[0]
        try:
            await client.enqueue(created)
            stages.lap("enqueue")
            return await _stream(ctx, client, job_id, chat, stages)
        except INFRASTRUCTURE_ERRORS as exc:
            raise unavailable(exc, job_id=job_id) from exc
    job = await run_and_wait(ctx, client, created, stages)
    headers = {"x-routeq-job-id": job.id, "x-routeq-deployment": job.deployment or ""}
    return AnswerResponse(message_object(job), headers=headers | stages.header())


async def _stream(
    ctx: ApiContext, client: Client, job_id: str, chat: ChatRequest, stages: Stages
) -> StreamingResponse:
    """Wait for the job's first piece (an error before it is a plain HTTP error), then stream."""
    first, pieces = await first_piece(ctx, client, job_id, stages)
    events = MessageStream(f"msg_{job_id}", chat.model)
    return StreamingResponse(
        _events(client, job_id, events, first, pieces),
        media_type="text/event-stream",
        headers={"x-routeq-job-id": job_id, "cache-control": "no-cache"} | stages.header(),
    )


async def _events(
    client: Client, job_id: str, events: MessageStream, first: Piece, pieces: AsyncGenerator[Piece, None]
) -> AsyncIterator[str]:
    """The SSE body: message_start, the pieces of one run as they come, then the stop reason and usage
    the job ended with (or an `error` event)."""
    try:
        yield events.start()
        piece, run = first, first.run
        while piece.end is None:
            if piece.run != run:
                # The worker died mid-answer and the job is running again: what was sent stands.
                yield error_event("the worker streaming this answer stopped; the text above is partial", 502)
                return
            for event in events.text(piece.text) if piece.text else events.choice(piece.delta or {}):
                yield event
            try:
                piece = await anext(pieces)
            except ServerStopping:
                yield error_event(stopping_message(job_id), 503)
                return
        job = await client.get(job_id)
        if job.status != JobStatus.SUCCEEDED:
            failure = job_failure(job)
            yield error_event(failure.message, failure.status)
            return
        message = message_object(job)
        closing = [] if events.blocks else events.whole(message)  # an answer that streamed no piece
        for event in [*closing, *events.end(message, routing_metadata(job))]:
            yield event
    finally:
        await pieces.aclose()
