"""The Anthropic Messages API with the official anthropic SDK as the client, unchanged: a message,
a tool round trip, a streamed answer, field-named errors and the key sent as `x-api-key`."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam

from tests.api_harness import serve_api
from tests.backends import Backend

WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_the_anthropic_sdk_talks_to_routeq_unchanged(backend: Backend) -> None:
    async with serve_api(backend) as api:
        client = anthropic.AsyncAnthropic(base_url=api.url, api_key=await api.key("acme"), max_retries=0)
        async with client:
            message = await client.messages.create(
                model="auto",
                max_tokens=1000,
                system="Answer in one line.",
                messages=[{"role": "user", "content": "Name a lighthouse"}],
                extra_body={"preferences": {"strategy": "cost"}},
            )
            assert message.type == "message"
            assert message.role == "assistant"
            [block] = message.content
            assert isinstance(block, anthropic.types.TextBlock)
            assert "simulated cheap-a" in block.text  # routed by cost
            assert message.stop_reason == "end_turn"
            assert message.usage.input_tokens > 0
            assert message.usage.output_tokens > 0

            asked = await client.messages.create(
                model="auto",
                max_tokens=1000,
                tools=[WEATHER],
                tool_choice={"type": "tool", "name": "get_weather"},
                messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            )
            assert asked.stop_reason == "tool_use"
            call = next(b for b in asked.content if isinstance(b, anthropic.types.ToolUseBlock))
            assert call.name == "get_weather"
            assert isinstance(call.input, dict)
            turns: list[MessageParam] = [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": asked.content},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny and mild"}],
                },
            ]
            answered = await client.messages.create(
                model="auto", max_tokens=1000, tools=[WEATHER], messages=turns
            )
            assert answered.stop_reason == "end_turn"
            assert isinstance(answered.content[0], anthropic.types.TextBlock)

            async with client.messages.stream(
                model="auto", max_tokens=1000, messages=[{"role": "user", "content": "Say hello"}]
            ) as stream:
                texts = [text async for text in stream.text_stream]
                final = await stream.get_final_message()
            assert "".join(texts) == final.content[0].text  # type: ignore[union-attr]
            assert final.stop_reason == "end_turn"

            system_turn: Any = {"role": "system", "content": "x"}  # not a Messages API role
            with pytest.raises(anthropic.BadRequestError, match=r"messages\.0\.role"):
                await client.messages.create(model="auto", max_tokens=10, messages=[system_turn])
            with pytest.raises(anthropic.NotFoundError):
                await client.messages.create(
                    model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
        stranger = anthropic.AsyncAnthropic(base_url=api.url, api_key="rq-not-a-key", max_retries=0)
        async with stranger:
            with pytest.raises(anthropic.AuthenticationError):
                await stranger.messages.create(
                    model="auto", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
