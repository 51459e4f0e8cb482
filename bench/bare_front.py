"""The least an HTTP front for chat completions can be (a reference for bench/api.py, not a product).

A bare ASGI application on uvicorn (uvloop, httptools: what `routeq serve` runs on) that answers
POST /v1/chat/completions by doing what the API's route does inside, and nothing else: one job
through `Client.create_single`, watched, queued and waited for as `producer.api.chat.run_and_wait`
does, and a `chat.completion` carrying the answer's text. No FastAPI, no API key, no rate limits,
no validation past reading `messages`, no metrics, no routing headers.

Its rate next to the direct client's is what the HTTP hop itself costs on the machine (the caller's
HTTP client, the server's parsing and writing, and the job's wait moved to another process), which
no API can avoid; `routeq serve` next to it is what routeq's API adds on top.

Run by bench/api.py (`python bench/bare_front.py PORT`, routeq's settings in the environment: the
bench's Redis, database and queue).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn

from producer.client import Client
from router_core.models import ChatRequest
from storage import keys
from storage.settings import Settings

Scope = dict[str, Any]
Receive = Any
Send = Any


class BareFront:
    """The ASGI application: opens the client at lifespan start-up, closes it at shutdown."""

    def __init__(self) -> None:
        self.client: Client | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._chat(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = await Client.connect(Settings(), tenant="bench", user="bench")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _chat(self, receive: Receive, send: Send) -> None:
        assert self.client is not None, "the lifespan start-up opens the client"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = ChatRequest.model_validate({"messages": json.loads(body)["messages"]})
        created = await self.client.create_single(request)
        job_id = created.job_ids[0]
        async with self.client.notifier.watch(keys.job_done_channel(job_id)) as done:
            await self.client.enqueue(created)
            job = await self.client.wait(job_id, woken=done)
        text = (job.result or {}).get("content")
        status, answer = (200, {"object": "chat.completion", "choices": [{"message": {"content": text}}]})
        if text is None:
            status, answer = 500, {"error": f"job {job_id} ended {job.status}: {job.error}"}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


if __name__ == "__main__":
    uvicorn.run(
        BareFront(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=5,  # as `routeq serve`: stops even if a caller left a request waiting
    )
