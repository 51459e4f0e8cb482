"""The ensemble strategy: a weighted Borda count over other strategies' rankings, with known rankings.

The trio's strategies disagree: cost ranks cheap-a, fast-b, smart-c; speed fast-b, cheap-a, smart-c;
quality smart-c, fast-b, cheap-a. With n = 3 a member gives 1, 0.5 and 0 points to its first, second
and last option, so every expected score below is worked out by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from router_core import Catalog, ChatRequest, build_plan
from router_core.cache import cache_key
from router_core.models import Strategy
from tests.conftest import RouterFactory, deployment, make_catalog


def request(**prefs: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "Tell me about the weather on Mars"}], "preferences": prefs}
    )


def scored(catalog: Catalog, **prefs: Any) -> list[tuple[str, float]]:
    plan = build_plan(request(**prefs), catalog, {})
    return [(c.deployment, round(c.score, 4)) for c in plan.candidates]


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        # Each member alone is its own ranking.
        ({"cost": 1}, [("cheap-a", 1.0), ("fast-b", 0.5), ("smart-c", 0.0)]),
        ({"speed": 1}, [("fast-b", 1.0), ("cheap-a", 0.5), ("smart-c", 0.0)]),
        ({"quality": 1}, [("smart-c", 1.0), ("fast-b", 0.5), ("cheap-a", 0.0)]),
        # cost wins: a = 3*1 + 0 = 3, b = 3*0.5 + 0.5 = 2, c = 0 + 1 = 1 (over 4).
        ({"cost": 3, "quality": 1}, [("cheap-a", 0.75), ("fast-b", 0.5), ("smart-c", 0.25)]),
        # quality wins: c = 3, b = 2, a = 1 (over 4).
        ({"cost": 1, "quality": 3}, [("smart-c", 0.75), ("fast-b", 0.5), ("cheap-a", 0.25)]),
        # speed wins: b = 0.5 + 2*1 = 2.5, a = 1 + 2*0.5 = 2, c = 0 (over 3).
        ({"cost": 1, "fast": 2}, [("fast-b", 0.8333), ("cheap-a", 0.6667), ("smart-c", 0.0)]),
    ],
)
def test_weights_decide_which_ranking_wins(
    trio: Catalog, weights: dict[str, float], expected: list[tuple[str, float]]
) -> None:
    assert scored(trio, strategy="ensemble", ensemble=weights) == expected


def test_default_vote_is_cost_speed_and_quality_alike(trio: Catalog) -> None:
    # a = 1 + 0.5 + 0 = 1.5, b = 0.5 + 1 + 0.5 = 2, c = 0 + 0 + 1 = 1 (over 3): the compromise wins.
    assert scored(trio, strategy="ensemble") == [("fast-b", 0.6667), ("cheap-a", 0.5), ("smart-c", 0.3333)]
    assert request(strategy="ensemble").preferences.votes() == {
        Strategy.COST: 1.0,
        Strategy.SPEED: 1.0,
        Strategy.QUALITY: 1.0,
    }


def test_a_tie_in_the_vote_goes_to_higher_quality(trio: Catalog) -> None:
    # b = 0.5 + 2*0.5 + 0.5*1 = 2 and c = 0 + 2*1 + 0 = 2: a tie, which smart-c's quality breaks.
    weights = {"cost": 1, "quality": 2, "speed": 0.5}
    assert scored(trio, strategy="ensemble", ensemble=weights) == [
        ("smart-c", 0.5714),
        ("fast-b", 0.5714),
        ("cheap-a", 0.3571),
    ]


def test_options_a_member_scores_alike_share_their_points() -> None:
    same_price = {"input_per_mtok": 1.0, "output_per_mtok": 1.0}
    catalog = make_catalog(
        [
            deployment("x", price=same_price, quality=0.7),
            deployment("y", price=same_price, quality=0.8),
            deployment("z", price={"input_per_mtok": 5.0, "output_per_mtok": 5.0}),
        ]
    )
    # x and y hold positions 0 and 1 together: (1 + 0.5) / 2 each, not 1 to whichever sorts first.
    assert scored(catalog, strategy="ensemble", ensemble={"cost": 1}) == [
        ("y", 0.75),
        ("x", 0.75),
        ("z", 0.0),
    ]


def test_fallback_chain_votes_without_excluding_the_rest(trio: Catalog) -> None:
    prefs = {"strategy": "ensemble", "ensemble": {"fallback_chain": 1}, "chain": ["smart-c", "fast-b"]}
    plan = build_plan(request(**prefs), trio, {})
    assert [c.deployment for c in plan.candidates] == ["smart-c", "fast-b", "cheap-a"]
    assert plan.excluded == []


@pytest.mark.parametrize(
    ("prefs", "message"),
    [
        ({"strategy": "ensemble", "ensemble": {"cheapest": 1}}, "unknown strategy 'cheapest'"),
        ({"strategy": "ensemble", "ensemble": {"cost": -1}}, "greater than or equal to 0"),
        ({"strategy": "ensemble", "ensemble": {"cost": 0, "speed": 0}}, "weight > 0"),
        ({"strategy": "ensemble", "ensemble": {}}, "weight > 0"),
        ({"strategy": "ensemble", "ensemble": {"ensemble": 1}}, "cannot hold 'ensemble'"),
        ({"strategy": "ensemble", "ensemble": {"escalate": 1}}, "cannot hold 'escalate'"),
        ({"strategy": "ensemble", "ensemble": {"fallback_chain": 1}}, "needs 'chain'"),
        ({"strategy": "ensemble", "ensemble": {"fast": 1, "speed": 2}}, "given twice"),
        ({"strategy": "cost", "ensemble": {"cost": 1}}, "is for strategy 'ensemble'"),
        ({"strategy": "ensemble", "ensemble": {"cost": float("nan")}}, "finite number"),
    ],
)
def test_bad_weights_are_refused_naming_the_field(prefs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        request(**prefs)
    assert "ensemble" in str(caught.value)


def test_weights_are_part_of_the_cache_key() -> None:
    cost_heavy = request(strategy="ensemble", ensemble={"cost": 2, "quality": 1})
    quality_heavy = request(strategy="ensemble", ensemble={"cost": 1, "quality": 2})
    assert cache_key(cost_heavy) != cache_key(quality_heavy)
    reordered = request(strategy="ensemble", ensemble={"quality": 1, "cost": 2})
    assert cache_key(cost_heavy) == cache_key(reordered)


async def test_a_round_robin_member_rotates_like_round_robin_alone(
    make_router: RouterFactory, trio: Catalog
) -> None:
    router = make_router(trio)
    req = request(strategy="ensemble", ensemble={"round_robin": 1})
    primaries = [(await router.plan(req)).primary.deployment for _ in range(3)]
    assert sorted(primaries) == ["cheap-a", "fast-b", "smart-c"]
