"""A tool-call round trip through routeq's own chat endpoint, with the openai SDK as the client.

The worker calls an OpenAI-wire or an Anthropic-wire deployment; either way the client sees OpenAI's
shape: streamed tool-call deltas as `chat.completion.chunk`s that reassemble to valid arguments,
`finish_reason: "tool_calls"`, and after the tool result a text answer.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.api_harness import serve_api
from tests.backends import Backend
from tests.conftest import deployment, make_catalog

PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
FORECAST: Any = {
    "type": "function",
    "function": {"name": "forecast", "description": "Weather forecast for a city", "parameters": PARAMS},
}
QUESTION: Any = {"role": "user", "content": "Forecast for Porto for the next three days?"}
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_streamed_tool_call_then_the_answer(backend: Backend, kind: str) -> None:
    catalog = make_catalog([deployment("dep-a", kind=kind, model=MODELS[kind], price=None)])
    async with serve_api(backend, catalog=catalog, loopback_sim=True) as api:
        client = api.openai(await api.key("acme"))
        stream = await client.chat.completions.create(
            model="auto", messages=[QUESTION], tools=[FORECAST], tool_choice="required", stream=True
        )
        calls: dict[int, dict[str, str]] = {}
        finish: list[str] = []
        async for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or ():
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] += delta.id or ""
                    if delta.function is not None:
                        call["name"] += delta.function.name or ""
                        call["arguments"] += delta.function.arguments or ""
                if choice.finish_reason:
                    finish.append(choice.finish_reason)
        assert finish == ["tool_calls"]
        [call] = calls.values()
        assert call["name"] == "forecast"
        assert call["id"]
        arguments = json.loads(call["arguments"])
        jsonschema.validate(arguments, PARAMS)

        answer = await client.chat.completions.create(
            model="auto",
            messages=[
                QUESTION,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": "forecast", "arguments": call["arguments"]},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 24C, light wind"},
            ],
            tools=[FORECAST],
        )
        assert answer.choices[0].finish_reason == "stop"
        assert answer.choices[0].message.content
        assert not answer.choices[0].message.tool_calls
