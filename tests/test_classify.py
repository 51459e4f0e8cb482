"""The classifier's cost is bounded: pathological prompts finish fast, long prompts are sampled."""

from __future__ import annotations

import time

import pytest

from router_core.classify import SAMPLE_CHARS, bounded_sample, classify
from router_core.models import Capability, Complexity
from router_core.tokens import estimate_tokens

MB = 1024 * 1024

# Shapes that make backtracking regexes slow: one long run of a character class a pattern repeats.
PATHOLOGICAL = {
    "digits": "7" * MB,
    "digits then operator": "7" * MB + "+",
    "whitespace": " \t\n" * (MB // 3),
    "digits and spaces": "7 " * (MB // 2),
    "repeated punctuation": "+-*/^?!." * (MB // 8),
    "letters": "a" * MB,
    "mixed": ("1234567890 " * 40 + "+ - ? ;; aaaa\n\n") * (MB // 480),
}


@pytest.mark.parametrize("shape", PATHOLOGICAL)
def test_pathological_megabyte_prompts_classify_fast(shape: str) -> None:
    # Generous bound: the quadratic digits pattern took minutes on a megabyte; this takes milliseconds.
    started = time.perf_counter()
    classify(PATHOLOGICAL[shape])
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("shape", PATHOLOGICAL)
def test_a_long_prompt_is_classified_by_its_bounded_sample(shape: str) -> None:
    text = PATHOLOGICAL[shape]
    sample = bounded_sample(text)
    assert len(sample) == 2 * SAMPLE_CHARS + 1
    assert sample == text[:SAMPLE_CHARS] + "\n" + text[-SAMPLE_CHARS:]
    assert bounded_sample(sample) == sample
    assert classify(text) == classify(sample)


def test_short_prompts_are_read_whole() -> None:
    text = "x" * (2 * SAMPLE_CHARS + 1)
    assert bounded_sample(text) is text


def test_the_sample_keeps_what_the_start_and_the_end_ask_for() -> None:
    filler = "lorem ipsum " * 100_000
    assert classify("Translate this into French:\n" + filler).capability is Capability.TRANSLATION
    assert classify(filler + "\nNow summarize the text above.").capability is Capability.SUMMARIZATION
    # One end of the sample alone is a long prompt, so a sampled prompt stays high complexity.
    assert estimate_tokens("x" * SAMPLE_CHARS) > 1500
    assert classify(filler).complexity is Complexity.HIGH


@pytest.mark.parametrize(
    ("text", "hits"),
    [("2 + 3", True), ("12*34 and 5 ^ 6", True), ("2024 then 7", False), ("x+1", False)],
)
def test_arithmetic_is_still_recognised(text: str, hits: bool) -> None:
    assert (classify(text).capability is Capability.MATH) is hits
