"""The Anthropic Messages API: `POST /v1/messages`, so code written for the anthropic SDK points at
routeq unchanged (`Anthropic(base_url=..., api_key=<routeq key>)`) and is routed across every
provider. The body is translated (`producer.anthropic_wire`) and checked like a chat completion,
rate-limited and run as one job; the answer is Anthropic's `message`. With `stream: true` it comes
as the Messages API's events once the job has finished (one delta per content block), which the
SDK's stream helpers accumulate as usual. Errors have the statuses of chat completions (the SDK
raises its `BadRequestError`, `RateLimitError`... by status) and routeq's error body.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from producer.anthropic_wire import MessagesBodyError, chat_body, message_events, message_object
from producer.api.auth import Caller
from producer.api.chat import checked_request, run_and_wait
from producer.api.context import Ctx
from producer.api.errors import ApiError
from producer.api.ratelimit import admit, request_tokens

__all__ = ["router"]

router = APIRouter(tags=["Anthropic-compatible"])


@router.post(
    "/v1/messages", summary="Create a routed message (the Anthropic Messages API)", response_model=None
)
async def create_message(request: Request, principal: Caller, ctx: Ctx) -> JSONResponse | StreamingResponse:
    try:
        body: Any = json.loads(await request.body())
    except ValueError:
        raise ApiError(400, "the body is not JSON", code="invalid_request") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_request")
    if "max_tokens" not in body:
        raise ApiError(400, "max_tokens: Field required", param="max_tokens", code="invalid_request")
    try:
        fields = chat_body(body)
    except MessagesBodyError as exc:
        raise ApiError(400, str(exc), param=exc.field, code="invalid_request") from None
    stream = bool(fields.pop("stream", False))
    chat = checked_request(fields, ctx)
    await admit(ctx, principal, tokens=request_tokens(chat, ctx.settings.default_completion_tokens))
    client = ctx.client(principal.tenant, principal.user, principal.key_id)
    job = await run_and_wait(ctx, client, await client.create_single(chat))
    message = message_object(job)
    headers = {"x-routeq-job-id": job.id, "x-routeq-deployment": job.deployment or ""}
    if stream:
        return StreamingResponse(message_events(message), media_type="text/event-stream", headers=headers)
    return JSONResponse(message, headers=headers)
