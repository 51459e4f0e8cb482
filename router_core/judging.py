"""Asking a judge deployment to grade an answer: the request routeq sends, and reading its verdict.

One request shape serves every judge, simulated or real (an OpenAI or Anthropic deployment): the
rubric goes in the system message, the question and the answer under review in the user message
between fixed tags, and the judge is asked for a JSON object `{"score": ..., "reason": ...}`. When
the judge deployment honours `json_schema`, the request also carries that schema as its
`response_format`, so a real model cannot wander off the format; without it the prompt alone asks.

The request is pinned to the judge deployment with `allow_fallbacks=false`: a verdict from another
model than the configured judge would be evidence of a different kind. The response cache is off:
each verdict is an observation paid for like any call.

The question is rendered as `ChatRequest.prompt_text()`, the same text the classifier reads when
routing and when counting evidence (`quality.evidence_for`), so a judge that weighs difficulty sees
what the planner saw.

`parse_verdict` reads the answer: a score in [0, 1], or on a 1-10 scale (divided by 10), with a
`VerdictError` naming what is wrong otherwise.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from router_core.cache import CachePreference
from router_core.catalog import Deployment
from router_core.chat import Feature, JsonSchemaFormat, ResponseFormat
from router_core.models import ChatRequest, Message, Preferences

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "DEFAULT_RUBRIC",
    "QUESTION_CLOSE",
    "QUESTION_OPEN",
    "VERDICT_SCHEMA",
    "VerdictError",
    "judge_request",
    "parse_verdict",
]

DEFAULT_RUBRIC = (
    "You are a strict grader of answers given by AI assistants. Judge whether the answer is correct, "
    "complete and helpful for the question, and clearly written. A score of 1.0 means an excellent "
    "answer, 0.5 a partly useful one, 0.0 a wrong or useless one."
)
"""The rubric used when `ROUTEQ_EVAL_RUBRIC` is not set."""

QUESTION_OPEN, QUESTION_CLOSE = "<question>", "</question>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    },
    "required": ["score", "reason"],
    "additionalProperties": False,
}
"""The JSON a judge answers with (sent as `response_format` when the deployment honours it)."""

_INSTRUCTION = 'Reply with only a JSON object {"score": <a number from 0 to 1>, "reason": "<one sentence>"}.'
_TEN_SCALE_MAX = 10.0
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class VerdictError(ValueError):
    """A judge's answer is not a verdict: no JSON object, no numeric `score`, or a score out of range."""


def judge_prompt(question: str, answer: str) -> str:
    """The user message of a judge request: the question and the answer between their tags."""
    return (
        f"{QUESTION_OPEN}\n{question}\n{QUESTION_CLOSE}\n"
        f"{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}\n"
        f"Grade the answer to the question. {_INSTRUCTION}"
    )


def judge_request(
    question_messages: list[Message],
    answer_text: str,
    judge: Deployment,
    *,
    rubric: str = DEFAULT_RUBRIC,
    metadata: dict[str, str] | None = None,
) -> ChatRequest:
    """A request asking `judge` to grade `answer_text` as an answer to `question_messages`.

    Args:
        question_messages: The messages of the request under review (system turns included).
        answer_text: The answer under review (its first choice's text).
        judge: The judge deployment; the request is pinned to it, without fallbacks.
        rubric: What a good answer is; the system message.
        metadata: Request metadata (e.g. which job is under review), carried to the job.

    Returns:
        The request, ready to submit like any other.
    """
    question = ChatRequest(messages=question_messages).prompt_text()
    response_format = None
    if Feature.JSON_SCHEMA in judge.features:
        schema = JsonSchemaFormat(name="verdict", schema_=VERDICT_SCHEMA, strict=True)
        response_format = ResponseFormat(type="json_schema", json_schema=schema)
    return ChatRequest(
        model=judge.id,
        messages=[
            Message(role="system", content=rubric),
            Message(role="user", content=judge_prompt(question, answer_text)),
        ],
        temperature=0.0 if Feature.TEMPERATURE in judge.features else None,
        response_format=response_format,
        metadata=metadata,
        preferences=Preferences(allow_fallbacks=False, cache=CachePreference(mode="off")),
    )


def parse_verdict(text: str) -> float:
    """The score in [0, 1] a judge's answer gives.

    Accepts the JSON object alone or wrapped in prose or a code fence (the first `{` to the last
    `}`). A score above 1 and at most 10 is read on a 1-10 scale and divided by 10; exactly 1 is
    the top of the 0-1 scale.

    Args:
        text: The judge's answer.

    Returns:
        The score, within [0, 1].

    Raises:
        VerdictError: The text holds no JSON object, its `score` is missing or not a number, or the
            score is outside [0, 10].
    """
    found = _OBJECT.search(text)
    if found is None:
        raise VerdictError(f"judge verdict has no JSON object: {text[:120]!r}")
    try:
        value = json.loads(found.group(0))
    except ValueError as exc:
        raise VerdictError(f"judge verdict is not valid JSON ({exc}): {text[:120]!r}") from exc
    if not isinstance(value, dict) or "score" not in value:
        raise VerdictError(f'judge verdict has no "score" field: {text[:120]!r}')
    score = value["score"]
    if isinstance(score, str):
        try:
            score = float(score)
        except ValueError:
            score = None
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise VerdictError(f'judge verdict "score" is not a number: {value["score"]!r}')
    if 0.0 <= score <= 1.0:
        return float(score)
    if 1.0 < score <= _TEN_SCALE_MAX:
        return float(score) / _TEN_SCALE_MAX
    raise VerdictError(f'judge verdict "score" {score!r} is outside 0..1 (or 1..10)')
