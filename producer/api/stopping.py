"""Requests that wait on a job, answered before the server's grace period ends when it stops.

On SIGTERM `routeq serve` stops taking connections and gives the requests in progress
ROUTEQ_SHUTDOWN_GRACE_S to be answered; uvicorn then cancels what is left, which the caller sees as
a bare `500 Internal Server Error` (and the log as a traceback). A chat completion can wait for its
job for up to ROUTEQ_API_WAIT_TIMEOUT_S (ten minutes), far past any grace period. So each such wait
registers its deadline here, and when the server starts to stop (`ApiServer.shutdown`, in
producer/api/app.py) every deadline is brought forward to just before the grace period ends: the
request answers a 503 naming its job, which goes on in the workers and is read by its id. A stream
already under way (`follow`) ends the same way, with an error event naming the job, instead of a
connection cut mid-answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

from producer.api.errors import ApiError

__all__ = ["ServerStopping", "Stopping", "stopping_error", "stopping_message"]

T = TypeVar("T")

# Waits are cut this long before the grace period ends, so their answers are written before uvicorn
# cancels what is left (or at once when the grace is shorter).
_MARGIN_S = 0.5


class Stopping:
    """The deadlines of the requests waiting on jobs, and whether the server has started to stop."""

    def __init__(self) -> None:
        self._waits: set[asyncio.Timeout] = set()
        self._deadline: float | None = None  # the loop time waits end by, once stopping

    @property
    def begun(self) -> bool:
        return self._deadline is not None

    @contextmanager
    def cutting(self, wait: asyncio.Timeout) -> Iterator[None]:
        """Within this block, `wait` (an `asyncio.timeout`) ends early when the server stops."""
        self._bring_forward(wait)
        self._waits.add(wait)
        try:
            yield
        finally:
            self._waits.discard(wait)

    @asynccontextmanager
    async def waiting(self, timeout_s: float | None) -> AsyncIterator[None]:
        """`asyncio.timeout(timeout_s)` (None: no limit), cut short when the server stops: past it,
        `TimeoutError` (`begun` tells which)."""
        async with asyncio.timeout(timeout_s) as wait:
            with self.cutting(wait):
                yield

    async def follow(self, pieces: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """`pieces` until they end, or `ServerStopping` once the server stops before they do."""
        try:
            while True:
                async with self.waiting(None):
                    try:
                        piece = await anext(pieces)
                    except StopAsyncIteration:
                        return
                yield piece
        except TimeoutError:
            raise ServerStopping from None
        finally:
            await pieces.aclose()

    def begin(self, grace_s: float) -> None:
        """The server is stopping and gives requests `grace_s`: cut every wait short of that."""
        self._deadline = asyncio.get_running_loop().time() + max(0.0, grace_s - _MARGIN_S)
        for wait in self._waits:
            self._bring_forward(wait)

    def _bring_forward(self, wait: asyncio.Timeout) -> None:
        when = wait.when()
        if self._deadline is not None and (when is None or when > self._deadline):
            wait.reschedule(self._deadline)


class ServerStopping(Exception):
    """The server stopped before the stream followed (`Stopping.follow`) ended."""


def stopping_message(job_id: str) -> str:
    return (
        f"this API server is stopping; job {job_id} goes on: GET /v1/jobs/{job_id}, or retry with the "
        "same Idempotency-Key"
    )


def stopping_error(job_id: str) -> ApiError:
    """The 503 of a request whose job had not finished when the server stopped."""
    return ApiError(
        503,
        stopping_message(job_id),
        type_="service_unavailable",
        code="server_stopping",
        job_id=job_id,
        headers={"Retry-After": "1"},
    )
