"""The openai adapter's streamed calls: the request is the SDK's own streamed `create`'s, and the
chunks, read as JSON, relay what the SDK's typed chunks would."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletionChunk

from router_core.providers.base import Delta, ProviderReply, StreamPart
from router_core.providers.factory import OpenAIClient
from router_core.providers.http import AsyncClient
from router_core.providers.openai import OpenAIProvider, StreamedAnswer, openai_body
from tests.conftest import deployment, make_catalog
from tests.test_providers import ask_request


async def test_a_streamed_chat_call_sends_what_the_sdks_streamed_create_sends() -> None:
    """A streamed call goes out as `complete`'s does (options template, JSON body): the request is
    the SDK's own `chat.completions.create(stream=True, stream_options=...)`'s."""
    dep = make_catalog([deployment("dep-a", kind="openai", model="some-model")])["dep-a"]
    sent: list[httpx2.Request] = []
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "some-model"}
    events = [
        chunk | {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": "stop"}]},
        chunk | {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
    ]
    stream = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=stream.encode())

    def transport() -> httpx2.MockTransport:
        return httpx2.MockTransport(answer)

    base_url = "https://h.invalid/v1"
    plain = openai.AsyncOpenAI(
        api_key="k", base_url=base_url, max_retries=0, http_client=httpx2.AsyncClient(transport=transport())
    )
    ours = OpenAIClient(
        api_key="k", base_url=base_url, max_retries=0, http_client=AsyncClient(transport=transport())
    )
    provider = OpenAIProvider(dep, ours)
    request = ask_request("Hi, ünïcode")
    for _ in range(2):  # the first call asks the platform; the second uses the kept headers
        body = openai_body(request, dep, 16)
        theirs = await plain.chat.completions.create(
            **body, stream=True, stream_options={"include_usage": True}, timeout=5
        )
        assert [c.choices[0].delta.content async for c in theirs if c.choices] == ["Hello"]
        parts = [part async for part in provider.stream(request, max_tokens=16, timeout_s=5)]
        reply = parts[-1]
        assert isinstance(reply, ProviderReply)
        assert (parts[:-1], reply.content, reply.usage.output_tokens) == (["Hello"], "Hello", 1)
    for theirs_sent, mine in zip(sent[::2], sent[1::2], strict=True):
        assert (mine.method, mine.url) == (theirs_sent.method, theirs_sent.url)
        assert json.loads(mine.content) == json.loads(theirs_sent.content)
        assert mine.headers.raw == theirs_sent.headers.raw, (mine.headers.raw, theirs_sent.headers.raw)


# Chunks as providers stream them: text, a refusal, tool calls in pieces, logprobs (with nulls the
# SDK's models leave out), a field the SDK does not know, a second choice, the finish and usage.
_STREAMED_CHUNKS: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None, "logprobs": None}]},
    {"choices": [{"index": 0, "delta": {"content": "lo"}, "logprobs": {"content": [
        {"token": "lo", "logprob": -0.1, "bytes": None, "top_logprobs": []}], "refusal": None}}]},
    {"choices": [{"index": 1, "delta": {"refusal": "No."}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": '{"a": 1}'}, "id": None}]}, "vendor_extra": {"x": 1}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"},
                 {"index": 1, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
]  # fmt: skip


def test_a_stream_read_as_json_relays_what_the_sdks_typed_chunks_would() -> None:
    """`OpenAIProvider.stream` reads each chunk as JSON (`cast_to=object`): what it relays and the
    answer it rebuilds are what the SDK's `ChatCompletionChunk`s, dumped without nulls, gave."""
    head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    typed_parts: list[StreamPart] = []
    json_parts: list[StreamPart] = []
    json_answer = StreamedAnswer()
    for chunk in _STREAMED_CHUNKS:
        typed = ChatCompletionChunk.model_validate(head | chunk)
        for choice in typed.choices:
            delta = choice.delta
            other = delta.tool_calls or delta.refusal or choice.logprobs
            if choice.index == 0 and delta.content and not other:
                typed_parts.append(delta.content)
            elif delta.content or other:
                typed_parts.append(Delta(choice.model_dump(mode="json", exclude_none=True)))
        json_parts += json_answer.add(head | chunk)

    assert json_parts == typed_parts
    first, second = json_answer.choices()
    assert first.message == {
        "role": "assistant",
        "content": "Hello",
        "refusal": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ],
    }
    assert first.finish_reason == "tool_calls"
    lo = {"token": "lo", "logprob": -0.1, "top_logprobs": []}
    assert first.logprobs == {"content": [lo], "refusal": None}
    assert (second.message["refusal"], second.finish_reason) == ("No.", "stop")
