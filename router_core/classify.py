"""Cheap prompt classification: which capability a prompt needs, how complex it is, how many tokens.

Keyword and shape heuristics, run on every request on the worker's event loop, so their cost must
not grow with the prompt: a prompt longer than `2 * SAMPLE_CHARS` is classified by its first and
last `SAMPLE_CHARS` characters only (`bounded_sample`); what a prompt asks for is said at its start
or its end, and a sample that long is already past the "long prompt" threshold. Every pattern is
linear in its input (no quantifier can backtrack over what another one took), so even the sample
costs well under a millisecond. A request's `preferences.capability` overrides the guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from router_core.models import Capability, Complexity
from router_core.tokens import estimate_tokens

__all__ = ["SAMPLE_CHARS", "Classification", "bounded_sample", "classify"]

SAMPLE_CHARS = 8 * 1024
"""Characters read from each end of a long prompt. At ~4 characters a token, one end alone is past
the 1,500 tokens that make a prompt's complexity high, so sampling never turns a long prompt short."""

_RULES: tuple[tuple[Capability, re.Pattern[str]], ...] = (
    (
        Capability.CODE,
        re.compile(
            r"```|\bdef |\bclass |\bfunction\b|\bpython\b|\bjavascript\b|\btypescript\b|\brust\b|"
            r"\bsql\b|\bregex\b|\bbug\b|\bstack ?trace\b|\bcompile|\brefactor|\bunit tests?\b|"
            r"\bcode\b|\bapi\b|\bscript\b|\balgorithm\b",
            re.IGNORECASE,
        ),
    ),
    (
        Capability.MATH,
        re.compile(
            r"\bsolve\b|\bequation|\bintegral|\bderivative|\bprobability\b|\bprove\b|\btheorem\b|"
            # An arithmetic expression is matched only from the start of a run of digits, with
            # possessive quantifiers: a run of digits is read once instead of once per digit (that
            # backtracking made a 40,000-digit prompt take a minute on the worker's loop).
            r"\bcalculate\b|\bcompute\b|(?<!\d)\d++\s*+[-+*/^]\s*+\d++|\bmatrix\b|\bstatistic",
            re.IGNORECASE,
        ),
    ),
    (
        Capability.TRANSLATION,
        re.compile(
            r"\btranslat|\bin (french|german|spanish|italian|japanese|chinese|portuguese|korean)\b|"
            r"\binto (english|french|german|spanish|italian|japanese|chinese|portuguese|korean)\b",
            re.IGNORECASE,
        ),
    ),
    (
        Capability.SUMMARIZATION,
        re.compile(r"\bsummari[sz]|\btl;?dr\b|\bkey points\b|\bcondense\b|\bin brief\b", re.IGNORECASE),
    ),
    (
        Capability.ANALYSIS,
        re.compile(
            r"\banaly[sz]|\bcompare\b|\bcomparison\b|\bevaluate\b|\btrade-?offs?\b|\bpros and cons\b|"
            r"\bassess\b|\bcritique\b|\bimplications?\b|\bwhy does\b|\broot cause\b",
            re.IGNORECASE,
        ),
    ),
    (
        Capability.WRITING,
        re.compile(
            r"\bwrite\b|\bessay\b|\bstory\b|\bpoem\b|\bblog\b|\bemail\b|\bletter\b|\bdraft\b|"
            r"\brewrite\b|\bcopy ?writ|\bslogan\b|\bcover letter\b",
            re.IGNORECASE,
        ),
    ),
)
_QUESTION = re.compile(r"^\s*(what|who|when|where|which|how many|is|are|does|do|can)\b", re.IGNORECASE)
_REASONING = re.compile(
    r"\bstep[- ]by[- ]step\b|\bexplain why\b|\bdesign\b|\barchitecture\b|\boptimi[sz]e\b|\bprove\b|"
    r"\bdetailed\b|\bin depth\b|\bcomprehensive\b|\bmulti-?step\b",
    re.IGNORECASE,
)
_SIMPLE_QA_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class Classification:
    capability: Capability
    complexity: Complexity


def bounded_sample(text: str) -> str:
    """What `classify` reads of `text`: all of it, or its first and last `SAMPLE_CHARS` characters.

    The two ends are joined by a newline, so no word or number is formed across the cut, and the
    sample of a sample is itself (`classify(text) == classify(bounded_sample(text))`).
    """
    if len(text) <= 2 * SAMPLE_CHARS + 1:
        return text
    return f"{text[:SAMPLE_CHARS]}\n{text[-SAMPLE_CHARS:]}"


def classify(text: str) -> Classification:
    """Guess the capability a prompt needs and its complexity, from a bounded sample of `text`."""
    text = bounded_sample(text)
    hits = {cap: len(pattern.findall(text)) for cap, pattern in _RULES}
    best = max(hits, key=lambda cap: hits[cap])
    if hits[best] > 0:
        capability = best
    elif len(text) <= _SIMPLE_QA_MAX_CHARS and (_QUESTION.match(text) or text.rstrip().endswith("?")):
        capability = Capability.SIMPLE_QA
    else:
        capability = Capability.GENERAL
    return Classification(capability, _complexity(text, hits[best]))


def _complexity(text: str, signal_hits: int) -> Complexity:
    tokens = estimate_tokens(text)
    reasoning = len(_REASONING.findall(text))
    if tokens > 1500 or reasoning >= 2 or (reasoning and signal_hits >= 3):
        return Complexity.HIGH
    if tokens > 300 or reasoning or signal_hits >= 3:
        return Complexity.MEDIUM
    return Complexity.LOW
