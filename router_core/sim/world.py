"""`SimWorld`: an ASGI app that impersonates OpenAI- and Anthropic-style deployments.

Each deployment is the first path segment (`/{deployment}/v1/chat/completions`,
`/{deployment}/v1/messages`, `/{deployment}/v1/embeddings`) and behaves as its `SimProfile` says:
embeddings get the same faults, rpm window and latency as chat. Everything time-related goes
through the injected `Clock`, so tests run hours of rate-limit windows and hangs in microseconds.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from router_core.clock import Clock, SystemClock
from router_core.sim.answers import Answer, Choice, break_json, breaks_json, compose
from router_core.sim.judge import last_user_text, verdict_text
from router_core.sim.profiles import RECORDED_REQUESTS, DeploymentState, Fault, SimCounters, SimProfile
from router_core.sim.replies import completion_body, embedding_body, malformed_body, stream_frames
from router_core.sim.wire import (
    ERROR_STATUS,
    Dialect,
    ErrorKind,
    RequestError,
    WireRequest,
    context_length_message,
    decode_body,
    dumps,
    error_body,
    parse_body,
    parse_embedding_body,
)

__all__ = ["ConnectionDropped", "DropMode", "SimWorld"]

Scope = MutableMapping[str, Any]
AsgiMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]
DropMode = Literal["raise", "abort"]

_SIM_HEADER = (b"x-routeq-simulated", b"1")


class ConnectionDropped(Exception):
    """Raised by the world when a `drop` fault kills the connection.

    `SimTransport` turns it into the `httpx2.RemoteProtocolError` a real socket drop produces; under
    uvicorn it aborts the connection after the response headers were sent.
    """


def _headers(content_type: str, extra: Mapping[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type.encode()), _SIM_HEADER]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    return headers


async def _send(
    send: Send, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None
) -> None:
    headers = [*_headers(content_type, extra), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_json(
    send: Send, status: int, payload: object, extra: Mapping[str, str] | None = None
) -> None:
    await _send(send, status, dumps(payload), "application/json", extra)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class _Call:
    """One request in flight: where it goes and how to answer it."""

    dialect: Dialect
    deployment: str
    profile: SimProfile
    seq: int
    stats: SimCounters
    send: Send
    counted_at: float | None = None  # when its deployment's rpm window counted it (`_admit`)

    @property
    def id_header(self) -> dict[str, str]:
        name = "x-request-id" if self.dialect == "openai" else "request-id"
        return {name: f"sim-req-{self.seq:08d}"}

    def answer_headers(self, now: float) -> dict[str, str]:
        """The headers of an answer sent at `now`: its id and, as OpenAI's API does, how long it
        was held since it was counted (`openai-processing-ms`, whole ms rounded down)."""
        if self.dialect != "openai" or self.counted_at is None:
            return self.id_header
        held_ms = max(0, math.floor((now - self.counted_at) * 1000))
        return {**self.id_header, "openai-processing-ms": str(held_ms)}

    async def refuse(
        self,
        outcome: str,
        kind: ErrorKind,
        message: str,
        extra: Mapping[str, str] | None = None,
        *,
        param: str | None = None,
    ) -> None:
        """Answer with a provider-shaped error and count `outcome`."""
        self.stats.by_outcome[outcome] += 1
        if kind == "context_length":
            param = "messages"
        body = error_body(self.dialect, kind, message, param=param)
        await _send_json(self.send, ERROR_STATUS[kind], body, {**self.id_header, **(extra or {})})


class SimWorld:
    """ASGI3 app simulating provider deployments, with control endpoints under `/_sim/`.

    Control endpoints: `GET /_sim/health`, `GET /_sim/stats` (every deployment's `SimCounters`
    without the recorded bodies), `GET /_sim/requests/{deployment}` (its recorded request bodies,
    oldest first, as `{"deployment": ..., "requests": [...]}`), `PUT /_sim/profiles/{deployment}`.

    Attributes:
        clock: Source of time for windows, latency and hangs.
        stats: Per-deployment counters, keyed by deployment id.
        drop_mode: "raise" raises `ConnectionDropped` before responding (in-process transport);
            "abort" first sends response headers so a real server cuts the connection mid-response.
    """

    def __init__(
        self,
        profiles: Mapping[str, SimProfile] | None = None,
        *,
        clock: Clock | None = None,
        default_profile: SimProfile | None = None,
        drop_mode: DropMode = "raise",
        record_requests: int = RECORDED_REQUESTS,
    ) -> None:
        """Create a world.

        Args:
            profiles: Known deployments and their behaviour.
            clock: Time source; defaults to `SystemClock`.
            default_profile: Behaviour of any deployment not in `profiles`; without it those
                get a 404.
            drop_mode: How a `drop` fault surfaces; see the class docstring.
            record_requests: How many request bodies to keep per deployment (`last_requests`);
                0 keeps none.
        """
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.drop_mode: DropMode = drop_mode
        self._record = record_requests
        self.stats: dict[str, SimCounters] = {}
        self._default = default_profile
        self._deployments: dict[str, DeploymentState] = {}
        self._seq = 0
        for deployment, profile in (profiles or {}).items():
            self.set_profile(deployment, profile)

    def set_profile(self, deployment: str, profile: SimProfile) -> None:
        """Replace (or add) a deployment's profile; its script restarts, its rpm window is kept.

        Args:
            deployment: Deployment id (first path segment).
            profile: The new behaviour.
        """
        old = self._deployments.get(deployment)
        self._deployments[deployment] = DeploymentState(profile, old.window if old else None)
        if deployment not in self.stats:
            self.stats[deployment] = SimCounters(recorded=deque(maxlen=self._record))

    def last_requests(self, deployment: str) -> list[dict[str, Any]]:
        """The latest request bodies `deployment` received, oldest first, as parsed JSON objects.

        Every body that parsed as a JSON object is kept, rejected ones included, up to the world's
        `record_requests` per deployment. Use it to assert that a parameter reached the provider.
        The dicts are the ones the sim parsed, not copies: do not modify them.
        """
        stats = self.stats.get(deployment)
        return list(stats.recorded) if stats is not None else []

    def profile(self, deployment: str) -> SimProfile | None:
        """The profile currently applied to `deployment`, or None if it is unknown."""
        state = self._deployments.get(deployment)
        return state.profile if state else self._default

    def _state(self, deployment: str) -> DeploymentState | None:
        if deployment not in self._deployments and self._default is not None:
            self.set_profile(deployment, self._default)
        return self._deployments.get(deployment)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (`http` or `lifespan`)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        if parts[0] == "_sim":
            await self._control(method, parts[1:], receive, send)
        elif method == "POST" and parts[1:] == ["v1", "chat", "completions"]:
            await self._chat("openai", parts[0], receive, send)
        elif method == "POST" and parts[1:] == ["v1", "messages"]:
            await self._chat("anthropic", parts[0], receive, send)
        elif method == "POST" and parts[1:] == ["v1", "embeddings"]:
            await self._embeddings(parts[0], receive, send)
        else:
            message = f"Invalid URL ({method} {scope['path']})"
            await _send_json(send, 404, error_body("openai", "invalid_request", message))

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _control(self, method: str, parts: list[str], receive: Receive, send: Send) -> None:
        if method == "GET" and parts == ["health"]:
            await _send_json(send, 200, {"ok": True})
        elif method == "GET" and parts == ["stats"]:
            deployments = {name: stats.to_json() for name, stats in self.stats.items()}
            await _send_json(send, 200, {"now": self.clock.now(), "deployments": deployments})
        elif method == "GET" and len(parts) == 2 and parts[0] == "requests" and parts[1]:
            await _send_json(send, 200, {"deployment": parts[1], "requests": self.last_requests(parts[1])})
        elif method == "PUT" and len(parts) == 2 and parts[0] == "profiles" and parts[1]:
            body = await _read_body(receive)
            if body is None:
                return
            try:
                profile = SimProfile.model_validate_json(body)
            except ValidationError as exc:
                await _send_json(send, 422, {"error": str(exc)})
                return
            self.set_profile(parts[1], profile)
            await _send_json(send, 200, {"deployment": parts[1], "profile": profile.model_dump(mode="json")})
        else:
            await _send_json(
                send, 404, {"error": f"unknown control endpoint {method} /_sim/{'/'.join(parts)}"}
            )

    async def _sleep(self, seconds: float, receive: Receive) -> bool:
        """Sleep on the world's clock; False if the client disconnected first (nothing to answer)."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((sleeper, watcher), return_when=asyncio.FIRST_COMPLETED)
            return not watcher.done()
        finally:
            # Also runs when our own task is cancelled, so neither helper outlives the request.
            for task in (sleeper, watcher):
                task.cancel()
            await asyncio.gather(sleeper, watcher, return_exceptions=True)

    async def _open(
        self, dialect: Dialect, deployment: str, receive: Receive, send: Send
    ) -> tuple[_Call, DeploymentState, dict[str, Any]] | None:
        """Count the request and read its JSON body; None when it was answered (404, 400) or abandoned."""
        state = self._state(deployment)
        if state is None:
            message = f"The model deployment `{deployment}` does not exist or you do not have access to it."
            await _send_json(send, 404, error_body(dialect, "not_found", message))
            return None
        self.stats[deployment].requests += 1
        self._seq += 1
        call = _Call(dialect, deployment, state.profile, self._seq, self.stats[deployment], send)
        raw = await _read_body(receive)
        if raw is None:
            return None
        try:
            body = decode_body(raw)
        except RequestError as exc:
            await call.refuse("bad_request", exc.kind, exc.message, param=exc.param)
            return None
        call.stats.recorded.append(body)
        return call, state, body

    async def _wait(self, call: _Call, state: DeploymentState, fault: Fault, receive: Receive) -> bool:
        """The admitted request's latency, and a `timeout` fault's hang; False if the client left."""
        latency = state.latency_s()
        if latency > 0 and not await self._sleep(latency, receive):
            return False
        return not (fault == "timeout" and not await self._sleep(call.profile.hang_s, receive))

    async def _chat(self, dialect: Dialect, deployment: str, receive: Receive, send: Send) -> None:
        opened = await self._open(dialect, deployment, receive, send)
        if opened is None:
            return
        call, state, body = opened
        try:
            req = parse_body(dialect, body)
        except RequestError as exc:
            await call.refuse("bad_request", exc.kind, exc.message, param=exc.param)
            return
        fault = await self._admit(call, state, req.prompt_tokens, can_break_json=breaks_json(req))
        if fault is None or not await self._wait(call, state, fault, receive):
            return
        verdict = self._verdict(body) if call.profile.judge else None
        await self._respond(call, fault, req, verdict)

    def _verdict(self, body: Mapping[str, Any]) -> str | None:
        """A judge deployment's verdict on the judge request `body`, or None if it is not one."""

        def quality_of(deployment: str) -> float | None:
            profile = self.profile(deployment)
            return profile.judged_quality if profile is not None else None

        return verdict_text(last_user_text(body), quality_of)

    async def _embeddings(self, deployment: str, receive: Receive, send: Send) -> None:
        opened = await self._open("openai", deployment, receive, send)
        if opened is None:
            return
        call, state, body = opened
        try:
            req = parse_embedding_body(body)
        except RequestError as exc:
            await call.refuse("bad_request", exc.kind, exc.message, param=exc.param)
            return
        # The context window bounds each input, as the real limit does (8,192 tokens an input).
        fault = await self._admit(call, state, max(req.input_tokens), can_break_json=False)
        if fault is None or not await self._wait(call, state, fault, receive):
            return
        if not await self._fail(call, fault, stream=False):
            await _send_json(call.send, 200, embedding_body(req), call.answer_headers(self.clock.now()))

    async def _admit(
        self, call: _Call, state: DeploymentState, prompt_tokens: int, *, can_break_json: bool
    ) -> Fault | None:
        """Apply refusals in order (context, scripted/random fault, rpm window); None if refused.

        `can_break_json` says whether an `invalid_json` fault would change the answer; if not,
        the request is answered normally and counted "ok".
        """
        profile, window = call.profile, call.profile.context_window
        if prompt_tokens > window:
            message = context_length_message(call.dialect, prompt_tokens, window)
            await call.refuse("context_length", "context_length", message)
            return None
        fault = state.next_fault()
        if fault == "rate_limit":
            retry = {} if profile.retry_after_s is None else {"retry-after": f"{profile.retry_after_s:g}"}
            await call.refuse(
                "rate_limit", "rate_limit", "Rate limit reached for requests (simulated).", retry
            )
            return None
        if fault == "context_length":
            # A scripted rejection of a prompt that fits: report a size that would not, as the
            # real error always does, so callers parsing the numbers see a consistent pair.
            tokens = max(prompt_tokens, window + 1)
            await call.refuse(
                "context_length", "context_length", context_length_message(call.dialect, tokens, window)
            )
            return None
        now = self.clock.now()
        wait = state.try_admit(now)
        if wait is not None:
            retry = {"retry-after": str(max(1, math.ceil(wait)))}
            message = f"Rate limit reached: {profile.rpm} requests per {profile.window_s:g}s (simulated)."
            await call.refuse("rpm_limited", "rate_limit", message, retry)
            return None
        call.stats.record_admission(now)
        call.counted_at = now
        if fault == "invalid_json" and not can_break_json:
            fault = "ok"  # nothing to break: the answer is plain text or a tool call
        call.stats.by_outcome[fault] += 1
        return fault

    async def _fail(self, call: _Call, fault: Fault, *, stream: bool) -> bool:
        """Answer a drop, server error or malformed body as `fault` says; False for any other."""
        if fault == "drop":
            if self.drop_mode == "abort":
                headers = _headers("application/json", call.id_header)
                await call.send({"type": "http.response.start", "status": 200, "headers": headers})
            raise ConnectionDropped(f"simulated connection drop on {call.deployment}")
        if fault == "server_error":
            message = "The server had an error while processing your request. Sorry about that! (simulated)"
            sent = call.answer_headers(self.clock.now())
            await _send_json(call.send, 500, error_body(call.dialect, "server_error", message), sent)
            return True
        if fault == "malformed":
            broken, content_type = malformed_body(call.dialect, stream)
            await _send(call.send, 200, broken, content_type, call.answer_headers(self.clock.now()))
            return True
        return False

    async def _respond(self, call: _Call, fault: Fault, req: WireRequest, verdict: str | None) -> None:
        if await self._fail(call, fault, stream=req.stream):
            return
        if verdict is not None:
            # A verdict is short and whole: no max_tokens cut, every choice the same.
            text = break_json(verdict) if fault == "invalid_json" else verdict
            tokens = -(-len(text) // 4)
            answer = Answer(tuple(Choice(i, text, None, tokens, 0, "stop") for i in range(req.n)))
        else:
            answer = compose(
                req,
                deployment=call.deployment,
                output_tokens=call.profile.output_tokens,
                seq=call.seq,
                broken_json=fault == "invalid_json",
            )
        prefix = "sim-chatcmpl-" if call.dialect == "openai" else "sim-msg_"
        response_id = f"{prefix}{call.seq:08d}"
        if not req.stream:
            body = completion_body(req, response_id=response_id, answer=answer)
            await _send_json(call.send, 200, body, call.answer_headers(self.clock.now()))
            return
        frames = stream_frames(req, response_id=response_id, answer=answer)
        sent = call.answer_headers(self.clock.now())  # a stream's at its start, as OpenAI's
        headers = _headers("text/event-stream; charset=utf-8", {**sent, "cache-control": "no-cache"})
        await call.send({"type": "http.response.start", "status": 200, "headers": headers})
        pause = call.profile.stream_interval_ms / 1000
        for index, frame in enumerate(frames):
            if index and pause:
                await self.clock.sleep(pause)
            await call.send(
                {"type": "http.response.body", "body": frame, "more_body": index < len(frames) - 1}
            )
