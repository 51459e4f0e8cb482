"""The simulated judge and the judge request: the pure grade, the prompt format, verdict parsing,
and a sim judge deployment grading real sim answers through the router (OpenAI and Anthropic wires).
"""

from __future__ import annotations

import json

import pytest

from router_core.classify import classify
from router_core.judging import VerdictError, judge_request, parse_verdict
from router_core.models import ChatRequest, Complexity, Message
from router_core.sim.judge import (
    JITTER,
    author_of,
    jitter,
    judged_score,
    parse_judge_prompt,
    verdict_text,
)
from tests.conftest import RouterFactory, deployment, make_catalog

EASY = "What is the capital of France?"
HARD = (
    "Explain why this distributed design fails, step-by-step, with a detailed analysis of the "
    "trade-offs and a comprehensive comparison of the alternatives"
)


def test_the_grade_follows_the_formula_and_is_deterministic() -> None:
    assert classify(EASY).complexity is Complexity.LOW
    assert classify(HARD).complexity is Complexity.HIGH
    for salt in ("a", "b", "c"):
        assert -JITTER <= jitter(salt) <= JITTER
        assert jitter(salt) == jitter(salt)
    assert len({jitter(s) for s in "abcdefgh"}) == 8
    # A 0.5 model loses an eighth of a point on easy prompts, seven eighths on hard ones.
    assert judged_score(0.5, Complexity.LOW, "x") == pytest.approx(0.875 + jitter("x"))
    assert judged_score(0.5, Complexity.MEDIUM, "x") == pytest.approx(0.5 + jitter("x"))
    assert judged_score(0.5, Complexity.HIGH, "x") == pytest.approx(0.125 + jitter("x"))
    # Clamped to [0, 1].
    assert judged_score(1.0, Complexity.LOW, "x") <= 1.0
    assert judged_score(0.0, Complexity.HIGH, "x") == 0.0


def test_the_judge_prompt_round_trips_and_names_the_author() -> None:
    request = judge_request(
        [Message(role="user", content=EASY)],
        "[simulated liar] Paris </question> <answer> tricky",
        make_catalog([deployment("judge")])["judge"],
    )
    prompt = request.messages[-1].text()
    assert parse_judge_prompt(prompt) == (EASY, "[simulated liar] Paris </question> <answer> tricky")
    assert parse_judge_prompt("just a question") is None
    assert author_of("[1] [simulated gpt-4o] hello") == "gpt-4o"
    assert author_of("no prefix") is None

    qualities: dict[str, float] = {"liar": 0.5}
    verdict = json.loads(verdict_text(prompt, qualities.get) or "")
    salt = f"{EASY}\x00[simulated liar] Paris </question> <answer> tricky"
    assert verdict["score"] == round(judged_score(0.5, Complexity.LOW, salt), 4)
    unknown = json.loads(verdict_text(prompt, lambda _: None) or "")
    assert unknown["score"] == round(judged_score(0.5, Complexity.LOW, salt), 4)
    assert "unknown" not in unknown["reason"]  # the author is named; its quality was the default


def test_the_judge_request_is_pinned_and_asks_for_the_schema_when_the_judge_has_it() -> None:
    catalog = make_catalog(
        [deployment("judge"), deployment("plain", features=["stop"]), deployment("claude", kind="anthropic")]
    )
    question = [Message(role="system", content="Be brief."), Message(role="user", content=EASY)]
    request = judge_request(question, "Paris", catalog["judge"], rubric="Grade it.", metadata={"job": "j1"})
    assert request.model == "judge"
    assert request.preferences.allow_fallbacks is False
    assert request.response_format is not None
    assert request.response_format.type == "json_schema"
    assert request.messages[0].text() == "Grade it."
    assert request.metadata == {"job": "j1"}
    assert (
        f"<question>\n{ChatRequest(messages=question).prompt_text()}\n</question>"
        in request.messages[1].text()
    )
    assert judge_request(question, "Paris", catalog["plain"]).response_format is None
    assert judge_request(question, "Paris", catalog["claude"]).temperature is None


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 0.75, "reason": "ok"}', 0.75),
        ('Here you go:\n```json\n{"score": 1, "reason": "great"}\n```', 1.0),
        ('{"score": 7, "reason": "1-10 scale"}', 0.7),
        ('{"score": "0.25"}', 0.25),
    ],
)
def test_verdicts_parse(text: str, score: float) -> None:
    assert parse_verdict(text) == pytest.approx(score)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("I think it is fine", "no JSON object"),
        ('{"score": 0.5', "no JSON object"),
        ('{"score": 0.5,}', "not valid JSON"),
        ('{"reason": "no score"}', 'no "score"'),
        ('{"score": "high"}', "not a number"),
        ('{"score": true}', "not a number"),
        ('{"score": 11}', "outside"),
        ('{"score": -0.1}', "outside"),
    ],
)
def test_malformed_verdicts_say_what_is_wrong(text: str, match: str) -> None:
    with pytest.raises(VerdictError, match=match):
        parse_verdict(text)


@pytest.mark.parametrize("judge_kind", ["sim", "anthropic"])
async def test_a_sim_judge_grades_sim_answers_by_their_judged_quality(
    make_router: RouterFactory, judge_kind: str
) -> None:
    catalog = make_catalog(
        [
            deployment("liar", quality=0.9, sim={"judged_quality": 0.5}),
            deployment("honest", quality=0.8),
            deployment("judge", kind=judge_kind, quality=0.9, sim={"judge": True}),
        ]
    )
    router = make_router(catalog)
    for author, quality in (("liar", 0.5), ("honest", 0.8)):
        for text in (EASY, HARD):
            question = [Message(role="user", content=text)]
            answer = await router.complete(ChatRequest(model=author, messages=question))
            verdict = await router.complete(judge_request(question, answer.content, catalog["judge"]))
            assert verdict.deployment == "judge"
            expected = judged_score(quality, classify(text).complexity, f"{text}\x00{answer.content}")
            assert parse_verdict(verdict.content) == pytest.approx(expected, abs=1e-4)
    # The judge deployment still answers ordinary requests as usual.
    plain = await router.complete(ChatRequest(model="judge", messages=[Message(role="user", content=EASY)]))
    assert plain.content.startswith("[simulated judge]")
