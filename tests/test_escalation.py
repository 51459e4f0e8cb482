"""Difficulty-aware escalation: easy prompts to the cheapest good-enough deployment, hard ones up.

Pure planner tests on a board where the cheap model is judged nearly as good as the strong one on
easy (low-complexity) prompts and far worse on hard ones, as the simulated judge scores them. The
learned scores (strength 10, 100 samples per deployment x complexity) work out to:

                low     high
    cheap     0.848   0.352
    mid       0.924   0.676
    strong    0.983   0.917
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from router_core import Catalog, ChatRequest, build_plan
from router_core.models import Capability, Complexity
from router_core.quality import QualityBoard, Tally
from tests.conftest import deployment, make_catalog

EASY = "What is the capital of France?"
HARD = "Design a detailed architecture step by step for a Python service that ingests events."
LOW, HIGH = Complexity.LOW, Complexity.HIGH


def catalog() -> Catalog:
    return make_catalog(
        [
            deployment("strong", quality=0.95, price={"input_per_mtok": 10.0, "output_per_mtok": 40.0}),
            deployment("cheap", quality=0.6, price={"input_per_mtok": 0.1, "output_per_mtok": 0.4}),
            deployment("mid", quality=0.8, price={"input_per_mtok": 1.0, "output_per_mtok": 4.0}),
        ]
    )


def board() -> QualityBoard:
    judged = {"cheap": (0.90, 0.30), "mid": (0.95, 0.65), "strong": (0.99, 0.91)}
    tallies = [
        Tally(dep, Capability.GENERAL, cx, 100, 100 * score)
        for dep, scores in judged.items()
        for cx, score in zip((LOW, HIGH), scores, strict=True)
    ]
    return QualityBoard(tallies, strength=10)


def request(text: str, **prefs: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": text}], "preferences": {"strategy": "escalate", **prefs}}
    )


def order(text: str, quality: QualityBoard | None = None, **prefs: Any) -> list[str]:
    plan = build_plan(request(text, **prefs), catalog(), {}, quality=quality or board())
    return [c.deployment for c in plan.candidates]


@pytest.mark.parametrize(
    ("mode", "easy", "hard"),
    [
        # fast (0.15): low bar 0.983 - 0.15 = 0.833, cheap's 0.848 clears it; high bar 0.767: strong only.
        ("fast", ["cheap", "mid", "strong"], ["strong", "mid", "cheap"]),
        # balanced (0.07): low bar 0.913: mid and strong; cheap (below) after them.
        ("balanced", ["mid", "strong", "cheap"], ["strong", "mid", "cheap"]),
        # accurate (0.03): low bar 0.953: strong alone; the rest by quality.
        ("accurate", ["strong", "mid", "cheap"], ["strong", "mid", "cheap"]),
    ],
)
def test_easy_prompts_go_cheap_and_hard_ones_go_strong(mode: str, easy: list[str], hard: list[str]) -> None:
    assert order(EASY, escalation={"mode": mode}) == easy
    assert order(HARD, escalation={"mode": mode}) == hard


def test_the_plan_says_the_complexity_the_bar_and_each_candidates_score() -> None:
    plan = build_plan(request(EASY, escalation={"mode": "fast"}), catalog(), {}, quality=board())
    assert plan.escalation is not None
    assert plan.escalation.model_dump() == {
        "complexity": "low",
        "tolerance": 0.15,
        "best": pytest.approx(0.983, abs=1e-3),
        "threshold": pytest.approx(0.833, abs=1e-3),
        "source": "learned",
    }
    cheap = plan.primary
    # The candidate's quality is its learned score on low-complexity prompts, with those samples.
    assert (cheap.deployment, cheap.quality_source, cheap.quality_samples) == ("cheap", "learned", 100)
    assert cheap.quality == pytest.approx(0.848, abs=1e-3)
    hard = build_plan(request(HARD), catalog(), {}, quality=board())
    assert hard.escalation is not None
    assert (hard.escalation.complexity, hard.escalation.tolerance) == (HIGH, 0.07)
    assert hard.candidates[-1].quality == pytest.approx(0.352, abs=1e-3)


def test_without_evidence_the_catalog_priors_decide_and_the_plan_says_so() -> None:
    empty = QualityBoard()
    plan = build_plan(request(EASY, escalation={"mode": "fast"}), catalog(), {}, quality=empty)
    assert plan.escalation is not None
    assert (plan.escalation.source, plan.escalation.best) == ("prior", 0.95)
    # 0.95 - 0.15 = 0.80: mid's prior 0.8 is just enough, cheap's 0.6 is not.
    assert [c.deployment for c in plan.candidates] == ["mid", "strong", "cheap"]
    assert {c.quality_source for c in plan.candidates} == {"prior"}


def test_a_tolerance_sets_the_bar_directly() -> None:
    assert order(EASY, escalation={"tolerance": 0.0})[0] == "strong"
    assert order(EASY, escalation={"tolerance": 1.0}) == ["cheap", "mid", "strong"]
    assert order(HARD, escalation={"tolerance": 0.25})[0] == "mid"  # 0.917 - 0.25 = 0.667 < mid's 0.676


def test_min_quality_holds_the_score_for_the_prompts_complexity() -> None:
    plan = build_plan(request(HARD, min_quality=0.5), catalog(), {}, quality=board())
    [excluded] = plan.excluded
    assert excluded.deployment == "cheap"
    assert "quality 0.35 < min_quality 0.50" in excluded.detail


def test_other_strategies_plan_without_an_escalation() -> None:
    req = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": EASY}], "preferences": {"strategy": "cost"}}
    )
    assert build_plan(req, catalog(), {}, quality=board()).escalation is None


@pytest.mark.parametrize(
    ("prefs", "message"),
    [
        ({"escalation": {"mode": "fast", "tolerance": 0.1}}, "either 'mode' or 'tolerance'"),
        ({"escalation": {"mode": "cheapest"}}, "'fast', 'balanced' or 'accurate'"),
        ({"escalation": {"tolerance": 1.5}}, "less than or equal to 1"),
        ({"strategy": "quality", "escalation": {"mode": "fast"}}, "is for strategy 'escalate'"),
    ],
)
def test_bad_escalation_is_refused_naming_the_field(prefs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        request(EASY, **prefs)
    assert "escalation" in str(caught.value)
