"""Token estimates: one rule for the router's plans and the simulator's usage, so the two agree.

About 4 characters a token (at least one per text), and a few tokens of framing per chat message.
Cheap enough to run on every request; a provider's real count replaces it once a call returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["TOKENS_PER_MESSAGE", "estimate_tokens", "prompt_tokens"]

# Chat formats add a few tokens of framing per message.
TOKENS_PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    """Estimate the token count of `text`: one token per 4 characters.

    Args:
        text: Any text; an empty string still counts as one token.

    Returns:
        `max(1, ceil(len(text) / 4))`.
    """
    return max(1, math.ceil(len(text) / 4))


def prompt_tokens(message_texts: Iterable[str]) -> int:
    """Estimate a chat prompt: each message's text plus `TOKENS_PER_MESSAGE` of framing."""
    return sum(estimate_tokens(text) + TOKENS_PER_MESSAGE for text in message_texts)
