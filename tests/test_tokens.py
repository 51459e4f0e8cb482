"""The one token estimate shared by the planner and the simulator."""

from __future__ import annotations

from router_core.tokens import TOKENS_PER_MESSAGE, estimate_tokens, prompt_tokens


def test_four_characters_a_token_and_never_zero() -> None:
    assert estimate_tokens("") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2


def test_a_prompt_adds_framing_per_message() -> None:
    assert prompt_tokens([]) == 0
    assert prompt_tokens(["", "abcdefgh"]) == 1 + 2 + 2 * TOKENS_PER_MESSAGE
