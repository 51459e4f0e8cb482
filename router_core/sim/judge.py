"""The simulated judge: a deterministic grade for a simulated answer, so tests know what to expect.

A sim deployment whose profile sets `judge = true` answers a judge request (the fixed format of
`router_core.judging`: the question and the answer under review between `<question>` / `<answer>`
tags) with `{"score": ..., "reason": ...}`; any other request it answers like every sim deployment.
The grade is a pure function of who answered and how hard the question is:

    judged_score(quality, complexity, salt) = clamp01(1 - (1 - quality) * D[complexity] + jitter(salt))
    D = {low: 0.25, medium: 1.0, high: 1.75}
    jitter(salt) = a deterministic uniform number in [-0.02, 0.02] from sha256(salt)

`quality` is the answering deployment's `SimProfile.judged_quality` (the factory fills it with the
catalog quality when the profile leaves it unset), found from the `[simulated <id>]` prefix of the
answer under review; `complexity` is `router_core.classify.classify(question).complexity`. So a weak
model is nearly as good as a strong one on easy prompts and much worse on hard ones. An answer
without a sim prefix, or from a deployment the world does not know, is graded as quality
`UNKNOWN_QUALITY` (0.5).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from router_core.classify import classify
from router_core.judging import ANSWER_CLOSE, ANSWER_OPEN, QUESTION_CLOSE, QUESTION_OPEN
from router_core.models import Complexity

__all__ = [
    "DIFFICULTY",
    "JITTER",
    "UNKNOWN_QUALITY",
    "author_of",
    "jitter",
    "judged_score",
    "last_user_text",
    "parse_judge_prompt",
    "verdict_text",
]

DIFFICULTY: dict[Complexity, float] = {
    Complexity.LOW: 0.25,
    Complexity.MEDIUM: 1.0,
    Complexity.HIGH: 1.75,
}
"""How much of a deployment's shortfall (1 - quality) shows at each complexity."""

JITTER = 0.02
"""Half-width of the deterministic noise added to each grade."""

UNKNOWN_QUALITY = 0.5
"""The quality assumed for an answer whose author the world cannot tell."""

_AUTHOR = re.compile(r"\[simulated ([^\]\s]+)\]")
_HASH_SPAN = 2**64


def jitter(salt: str) -> float:
    """A deterministic uniform number in [-JITTER, JITTER] drawn from sha256(salt)."""
    draw = int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "big") / (_HASH_SPAN - 1)
    return (2.0 * draw - 1.0) * JITTER


def judged_score(quality: float, complexity: Complexity, salt: str) -> float:
    """The grade a sim judge gives an answer by a deployment of judged `quality`, within [0, 1].

    Args:
        quality: The answering deployment's judged quality.
        complexity: The question's complexity (`classify(question).complexity`).
        salt: What varies the jitter (the judge uses the question and the answer).

    Returns:
        `clamp01(1 - (1 - quality) * DIFFICULTY[complexity] + jitter(salt))`.
    """
    raw = 1.0 - (1.0 - quality) * DIFFICULTY[complexity] + jitter(salt)
    return min(1.0, max(0.0, raw))


def author_of(answer: str) -> str | None:
    """The deployment id of the first `[simulated <id>]` prefix in `answer`, or None."""
    found = _AUTHOR.search(answer)
    return found.group(1) if found else None


def parse_judge_prompt(text: str) -> tuple[str, str] | None:
    """The (question, answer) of a judge prompt built by `router_core.judging`, or None if `text`
    is not one.

    The question runs from the first `<question>` line to the `</question>` line followed by
    `<answer>`; the answer from there to the last `</answer>` line, so either may contain the
    other's tags in its text.
    """
    opening, middle = f"{QUESTION_OPEN}\n", f"\n{QUESTION_CLOSE}\n{ANSWER_OPEN}\n"
    start = text.find(opening)
    split = text.find(middle, start + len(opening)) if start >= 0 else -1
    end = text.rfind(f"\n{ANSWER_CLOSE}")
    if start < 0 or split < 0 or end < split + len(middle):
        return None
    return text[start + len(opening) : split], text[split + len(middle) : end]


def verdict_text(prompt: str, quality_of: Callable[[str], float | None]) -> str | None:
    """The sim judge's answer to a judge prompt, or None if `prompt` is not a judge prompt.

    Args:
        prompt: The text of the request's last user turn.
        quality_of: The judged quality of a deployment id, or None when it is unknown.

    Returns:
        Compact JSON `{"score": ..., "reason": ...}`.
    """
    parsed = parse_judge_prompt(prompt)
    if parsed is None:
        return None
    question, answer = parsed
    author = author_of(answer)
    known = quality_of(author) if author is not None else None
    quality = UNKNOWN_QUALITY if known is None else known
    complexity = classify(question).complexity
    score = round(judged_score(quality, complexity, f"{question}\x00{answer}"), 4)
    reason = f"simulated judge: {author or 'unknown author'} at quality {quality:g}, {complexity} question"
    return json.dumps({"score": score, "reason": reason}, separators=(",", ":"))


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user turn of an OpenAI or Anthropic chat body ("" when there is none).

    Both dialects carry `messages` whose `content` is a string or a list of blocks with `text`.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
        return ""
    return ""
