"""Request body limits, enforced as the bytes arrive: an oversize upload is refused with 413 without
being read whole (at once from Content-Length when the client sends it, else at the first byte over).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.api.errors import error_body

__all__ = ["BodyLimit"]


_MULTIPART_OVERHEAD = 16 * 1024


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Pure ASGI middleware: `uploads_max` for the upload route, `default_max` for every other body."""

    def __init__(self, app: ASGIApp, *, uploads_max: int, default_max: int, upload_path: str) -> None:
        self.app = app
        self.uploads_max = uploads_max
        self.default_max = default_max
        self.upload_path = upload_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == self.upload_path
        # Multipart framing around the file and the purpose field take a few hundred bytes.
        limit = self.uploads_max + _MULTIPART_OVERHEAD if upload else self.default_max
        what = (
            f"files are limited to {self.uploads_max} bytes (ROUTEQ_API_MAX_UPLOAD_BYTES)"
            if upload
            else (f"request bodies are limited to {self.default_max} bytes")
        )
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, what)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _refuse(send, what)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, what: str) -> None:
    body = json.dumps(
        error_body(f"request too large: {what}", type_="invalid_request_error", code="too_large")
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})
