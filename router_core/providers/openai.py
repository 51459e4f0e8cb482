"""Adapter for OpenAI and every OpenAI-compatible endpoint (vLLM, Ollama, OpenRouter, Groq, ...).

The request goes out as the user wrote it (tools, response_format, sampling, logprobs, `n`...):
the planner only routes a request here when the deployment's `features` say it honours every
field it sets. The answer comes back as OpenAI shaped it, all choices kept. Embeddings go through
`embeddings.create` (the SDK asks for base64 and decodes it to floats).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx2
import openai
from openai._models import FinalRequestOptions
from openai._streaming import AsyncStream
from openai.types import CompletionUsage
from pydantic_core import from_json, to_json

from router_core.catalog import Deployment, ProviderKind
from router_core.chat import Choice
from router_core.models import ChatRequest, Usage
from router_core.providers.base import SIMULATED_HEADER, Delta, EmbeddingReply, ProviderReply, StreamPart
from router_core.providers.errors import map_provider_error

__all__ = ["PROCESSING_HEADER", "OpenAIProvider", "openai_body", "processing_s"]

logger = logging.getLogger("routeq.providers")

# OpenAI's API says on each response how long its servers held the request, in whole milliseconds.
PROCESSING_HEADER = "openai-processing-ms"

# Request fields passed through as they are when set (the rest is routeq's or handled below).
_PASSED = (
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_effort",
    "service_tier",
    "user",
    "metadata",
)


def _usage(usage: CompletionUsage | None, deployment: str) -> Usage:
    """OpenAI's prompt_tokens already include cached tokens, as routeq's input_tokens do; its
    completion_tokens include reasoning tokens, as routeq's output_tokens do."""
    if usage is None:
        # Some OpenAI-compatible servers send no usage; nothing is known, so nothing is billed.
        logger.warning(
            "%s sent a response without usage: cost recorded as 0",
            deployment,
            extra={"deployment": deployment},
        )
        return Usage()
    prompt, completion = usage.prompt_tokens_details, usage.completion_tokens_details
    return Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_tokens=(prompt.cached_tokens or 0) if prompt else 0,
        reasoning_tokens=(completion.reasoning_tokens or 0) if completion else 0,
    )


def processing_s(headers: Mapping[str, str]) -> float | None:
    """The provider's `openai-processing-ms` in seconds, less a millisecond for its rounding (a
    whole number of ms may be rounded up), never below 0; None when missing or not a number.

    It bounds the call's arrival (`ProviderReply.server_s`), so it must never say more than the
    provider really held it: None, the rule without it, is always safe.
    """
    raw = headers.get(PROCESSING_HEADER)
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        return None
    return max(0.0, ms - 1.0) / 1000 if math.isfinite(ms) and ms >= 0 else None


def openai_body(request: ChatRequest, deployment: Deployment, max_tokens: int) -> dict[str, Any]:
    """The Chat Completions keyword arguments for `request` on `deployment`."""
    body: dict[str, Any] = {
        "model": deployment.model,
        "messages": [m.model_dump(mode="json", exclude_none=True) for m in request.messages],
    }
    # OpenAI's own API takes max_completion_tokens (its reasoning models refuse max_tokens);
    # OpenAI-compatible servers mostly know only max_tokens.
    cap = "max_completion_tokens" if deployment.kind is ProviderKind.OPENAI else "max_tokens"
    body[cap] = max_tokens
    for name in _PASSED:
        value = getattr(request, name)
        if value is not None:
            body[name] = (
                value.model_dump(mode="json", exclude_none=True) if hasattr(value, "model_dump") else value
            )
    if request.tools is not None:
        body["tools"] = [t.model_dump(mode="json", exclude_none=True) for t in request.tools]
    if request.response_format is not None:
        body["response_format"] = request.response_format.model_dump(mode="json", exclude_none=True)
    return body


class OpenAIProvider:
    """Chat Completions through `openai.AsyncOpenAI` (SDK retries off: the router retries)."""

    def __init__(self, deployment: Deployment, client: openai.AsyncOpenAI) -> None:
        self.deployment = deployment
        self._client = client
        # The SDK merges a relative path into its base URL on every call: three URL parses in Python
        # (about 15% of a call's CPU). The same merge made once gives an absolute URL, used as given
        # (the factory's clients keep their parses of it: providers/http.py).
        base = client.base_url
        self._chat_url = str(base.copy_with(raw_path=base.raw_path + b"chat/completions"))
        # `client.post` builds its request options with `FinalRequestOptions.construct`, which
        # deep-copies the default of every field it is not given (about a tenth of a call's CPU in
        # the SDK); a copy of these, made once, with this call's body and timeout is the same object.
        self._chat_options = FinalRequestOptions.construct(method="post", url=self._chat_url, files=None)

    def _options(self, body: dict[str, Any], timeout_s: float) -> FinalRequestOptions:
        """The chat endpoint's options (`_chat_options`) with this call's body, as the SDK would send
        it (`openapi_dumps`) written by pydantic-core in a quarter of its time, and its timeout."""
        return self._chat_options.model_copy(update={"json_data": to_json(body), "timeout": timeout_s})

    async def complete(self, request: ChatRequest, *, max_tokens: int, timeout_s: float) -> ProviderReply:
        """One chat completion through the SDK's HTTP client (auth, headers, errors as its own).

        The body is JSON already (`openai_body`), so it goes to `client.request` as it is (what
        `client.post` does, its options copied from a template: `_chat_options`), and the answer
        is read as the JSON it is: `chat.completions.create` would walk every field of the request
        through the SDK's typed-dict transform and build a model of every field of the answer, about
        a millisecond of CPU per call spent turning JSON into JSON.
        """
        dep = self.deployment
        body = openai_body(request, dep, max_tokens)
        try:
            response = await self._client.request(httpx2.Response, self._options(body, timeout_s))
        except Exception as exc:
            raise map_provider_error(exc, dep.id) from exc
        try:
            answer = from_json(response.content)
            choices = tuple(
                Choice(
                    index=choice.get("index", 0),
                    message=choice["message"],
                    finish_reason=choice.get("finish_reason"),
                    logprobs=choice.get("logprobs"),
                )
                for choice in answer["choices"]
            )
            usage = None if answer.get("usage") is None else CompletionUsage.model_validate(answer["usage"])
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        if not choices:
            raise map_provider_error(ValueError("the response has no choices"), dep.id, parsing=True)
        return ProviderReply(
            choices=choices,
            usage=_usage(usage, dep.id),
            model=answer.get("model") or dep.model,
            simulated=response.headers.get(SIMULATED_HEADER) == "1",
            server_s=processing_s(response.headers),
        )

    async def stream(
        self, request: ChatRequest, *, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamPart, None]:
        """A streamed chat completion through the SDK's stream (its SSE decoder, `[DONE]`, error
        events), each chunk read as the JSON it is (`cast_to=object`): the SDK's typed chunks
        (`construct_type` on every field of every chunk) were about a quarter of a streamed job's
        CPU. The request goes out as `complete`'s does, with `stream` and usage asked for."""
        dep = self.deployment
        body = openai_body(request, dep, max_tokens)
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        try:
            options = self._options(body, timeout_s)
            chunks = await self._client.request(object, options, stream=True, stream_cls=AsyncStream[object])
        except Exception as exc:
            raise map_provider_error(exc, dep.id) from exc
        answer = StreamedAnswer()
        usage: dict[str, Any] | None = None
        model = dep.model
        try:
            async for chunk in chunks:
                if not isinstance(chunk, dict):
                    raise TypeError(f"a stream chunk is not a JSON object: {chunk!r:.200}")
                model = chunk.get("model") or model
                usage = chunk.get("usage") or usage
                for part in answer.add(chunk):
                    yield part
            reply_usage = None if usage is None else CompletionUsage.model_validate(usage)
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        finally:
            await chunks.close()
        yield ProviderReply(
            choices=answer.choices(),
            usage=_usage(reply_usage, dep.id),
            model=model,
            simulated=chunks.response.headers.get(SIMULATED_HEADER) == "1",
            server_s=processing_s(chunks.response.headers),
        )

    async def embed(
        self, texts: list[str], *, dimensions: int | None, timeout_s: float | None = None
    ) -> EmbeddingReply:
        dep = self.deployment
        extra: dict[str, Any] = {} if dimensions is None else {"dimensions": dimensions}
        if timeout_s is not None:
            extra["timeout"] = timeout_s
        try:
            create = self._client.embeddings.with_raw_response.create
            raw = await create(model=dep.model, input=texts, **extra)
        except Exception as exc:
            raise map_provider_error(exc, dep.id) from exc
        try:
            response = raw.parse()
            vectors = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
        except Exception as exc:
            raise map_provider_error(exc, dep.id, parsing=True) from exc
        if len(vectors) != len(texts):
            problem = ValueError(f"{len(vectors)} embeddings for {len(texts)} inputs")
            raise map_provider_error(problem, dep.id, parsing=True)
        return EmbeddingReply(
            vectors=vectors,
            input_tokens=response.usage.prompt_tokens if response.usage else 0,
            simulated=raw.headers.get(SIMULATED_HEADER) == "1",
        )

    async def aclose(self) -> None:
        await self._client.close()


class StreamedAnswer:
    """Rebuilds the choices of a streamed completion from its chunks, and says what to relay:
    the first choice's text as plain strings, everything else as `Delta`s."""

    def __init__(self) -> None:
        self._text: dict[int, list[str]] = {}
        self._refusal: dict[int, list[str]] = {}
        self._calls: dict[int, dict[int, dict[str, Any]]] = {}
        self._finish: dict[int, str | None] = {}
        self._logprobs: dict[int, list[Any]] = {}

    def add(self, chunk: Mapping[str, Any]) -> list[StreamPart]:
        """Take one `chat.completion.chunk` (its JSON); returns what to relay of it."""
        parts: list[StreamPart] = []
        for choice in chunk.get("choices") or ():
            i, delta = choice["index"], choice.get("delta") or {}
            content, refusal, calls = delta.get("content"), delta.get("refusal"), delta.get("tool_calls")
            logprobs = choice.get("logprobs")
            self._text.setdefault(i, [])
            if choice.get("finish_reason"):
                self._finish[i] = choice["finish_reason"]
            if content:
                self._text[i].append(content)
            if refusal:
                self._refusal.setdefault(i, []).append(refusal)
            for call in calls or ():
                slot = self._calls.setdefault(i, {}).setdefault(
                    call["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                slot["id"] = call.get("id") or slot["id"]
                if (function := call.get("function")) is not None:
                    slot["function"]["name"] += function.get("name") or ""
                    slot["function"]["arguments"] += function.get("arguments") or ""
            if logprobs is not None and logprobs.get("content"):
                self._logprobs.setdefault(i, []).extend(_without_none(logprobs["content"]))
            if i == 0 and content and not (calls or refusal or logprobs):
                parts.append(content)
            elif content or calls or refusal or logprobs:
                parts.append(Delta(_without_none(choice)))
        return parts

    def choices(self) -> tuple[Choice, ...]:
        built = []
        for i in sorted(self._text):
            calls = [self._calls[i][k] for k in sorted(self._calls.get(i, {}))]
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(self._text[i]) if self._text[i] or not calls else None,
                "refusal": "".join(self._refusal[i]) if i in self._refusal else None,
            }
            if calls:
                message["tool_calls"] = calls
            logprobs = {"content": self._logprobs[i], "refusal": None} if i in self._logprobs else None
            built.append(
                Choice(index=i, message=message, finish_reason=self._finish.get(i), logprobs=logprobs)
            )
        return tuple(built)


def _without_none(value: Any) -> Any:
    """`value` (JSON) with every null member of every object left out, as the SDK's models dump
    (`exclude_none`) what a provider sent."""
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value]
    return value
