"""What the sim tests share: the prompt, a two-deployment world, and one call through each SDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
from anthropic.types import Message, MessageParam
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from router_core.clock import FakeClock
from router_core.sim import SimProfile, SimWorld

PROMPT = "Summarise the quarterly report please"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
USER_ANTHROPIC: list[MessageParam] = [{"role": "user", "content": PROMPT}]
OPENAI_MODEL = "gpt-sim"
# Not in anthropic's DEPRECATED_MODELS, which would warn (and warnings are errors here).
ANTHROPIC_MODEL = "claude-sim"

OpenAIFactory = Callable[..., openai.AsyncOpenAI]
AnthropicFactory = Callable[..., anthropic.AsyncAnthropic]


def world_with(clock: FakeClock | None = None, **profile: Any) -> SimWorld:
    """A world where dep-a (OpenAI-style) and dep-b (Anthropic-style) share one profile shape."""
    return SimWorld({"dep-a": SimProfile(**profile), "dep-b": SimProfile(**profile)}, clock=clock)


async def chat(client: openai.AsyncOpenAI, **kwargs: Any) -> ChatCompletion:
    result: ChatCompletion = await client.chat.completions.create(model=OPENAI_MODEL, messages=USER, **kwargs)
    return result


async def message(client: anthropic.AsyncAnthropic, max_tokens: int = 100) -> Message:
    return await client.messages.create(model=ANTHROPIC_MODEL, max_tokens=max_tokens, messages=USER_ANTHROPIC)
