"""Learned quality: the Bayesian board, the planner using it, evidence and feedback in SQL, the fleet cache.

The board and planner tests are pure; the storage tests run on both backends (fakeredis + SQLite,
real Redis + PostgreSQL in CI).
"""

from __future__ import annotations

import pytest

from producer.client import Client
from router_core.errors import InvalidRequestError
from router_core.fleet import Forced
from router_core.models import Capability, ChatRequest, Complexity, Message, Preferences
from router_core.planner import build_plan
from router_core.quality import Evidence, QualityBoard, Tally, evidence_for, shrink, tallies_from
from storage.errors import NotFoundError
from storage.fleet.quality import FleetQuality
from storage.fleet.state import RedisFleetState
from storage.jobs import JobStatus, NewJob
from storage.sql.quality import ScoredAnswer, rating_score
from tests.backends import Backend
from tests.conftest import TRIO, deployment, make_catalog

GENERAL, LOW = Capability.GENERAL, Complexity.LOW


def chat(text: str = "Tell me something nice", **prefs: object) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)], preferences=Preferences(**prefs))


def test_no_evidence_is_the_prior_and_evidence_moves_it_by_its_weight() -> None:
    [dep] = make_catalog([deployment("a", quality=0.9)]).values()
    assert QualityBoard().score(dep, GENERAL).value == 0.9
    assert QualityBoard().score(dep, GENERAL).source == "prior"

    # 10 pseudo-samples at 0.9 against 10 samples at 0.5: half way.
    board = QualityBoard([Tally("a", GENERAL, LOW, 10, 5.0)], strength=10)
    score = board.score(dep, GENERAL)
    assert score.value == pytest.approx(0.7)
    assert (score.source, score.samples, score.prior) == ("learned", 10, 0.9)
    # Many samples: almost all the way.
    many = QualityBoard([Tally("a", GENERAL, LOW, 1000, 500.0)], strength=10)
    assert many.score(dep, GENERAL).value == pytest.approx(0.5, abs=0.005)
    assert shrink(0.9, 0, 0.0, 10) == 0.9


def test_a_capability_with_no_evidence_borrows_from_the_deployments_other_answers() -> None:
    [dep] = make_catalog([deployment("a", quality=0.9)]).values()
    code, writing = Tally("a", Capability.CODE, LOW, 90, 45.0), Tally("a", Capability.WRITING, LOW, 10, 10.0)
    board = QualityBoard([code, writing], strength=10)
    # Each capability shrinks to the deployment's level from its *other* answers (no answer counted twice).
    assert board.score(dep, Capability.CODE).value == pytest.approx((10 * (19 / 20) + 45) / 100)
    assert board.score(dep, Capability.WRITING).value == pytest.approx((10 * 0.54 + 10) / 20)
    # Math has no evidence: it follows the deployment's level (0.58), not the catalog's 0.9.
    assert board.score(dep, Capability.MATH).value == pytest.approx(64 / 110)
    assert board.score(dep, Capability.MATH).samples == 100


def test_evidence_is_counted_under_the_class_the_planner_gives_the_prompt() -> None:
    e = evidence_for(chat("Write a Python function that sorts a list"), "a", 0.5)
    assert (e.deployment, e.capability, e.score) == ("a", Capability.CODE, 0.5)
    pinned = evidence_for(chat("Write a Python function", capability="math"), "a", 1.0)
    assert pinned.capability is Capability.MATH
    with pytest.raises(ValueError, match="within"):
        Evidence("a", GENERAL, LOW, 1.5)


def test_the_quality_strategy_and_min_quality_use_the_learned_score_and_the_plan_says_so() -> None:
    catalog = make_catalog([deployment("liar", quality=0.9), deployment("honest", quality=0.8)])
    request = chat(strategy="quality")
    assert build_plan(request, catalog, {}).primary.deployment == "liar"

    judged = [Evidence("liar", GENERAL, LOW, 0.5) for _ in range(40)]
    judged += [Evidence("honest", GENERAL, LOW, 0.8) for _ in range(40)]
    board = QualityBoard(tallies_from(judged))
    plan = build_plan(request, catalog, {}, quality=board)
    assert [c.deployment for c in plan.candidates] == ["honest", "liar"]
    liar = plan.candidates[1]
    assert (liar.quality_source, liar.quality_samples) == ("learned", 40)
    assert liar.quality == pytest.approx((10 * 0.9 + 20) / 50, abs=1e-4)

    strict = build_plan(chat(min_quality=0.75), catalog, {}, quality=board)
    [excluded] = strict.excluded
    assert excluded.deployment == "liar"
    assert "quality 0.58 < min_quality 0.75" in excluded.detail


def test_a_rating_is_stars_or_thumbs_never_both() -> None:
    assert [rating_score(r, None) for r in range(1, 6)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (rating_score(None, "up"), rating_score(None, "down")) == (1.0, 0.0)
    with pytest.raises(InvalidRequestError, match="either"):
        rating_score(3, "up")
    with pytest.raises(InvalidRequestError, match="1-5"):
        rating_score(6, None)


async def _one_job(backend: Backend, tenant: str = "acme", text: str = "Tell me something nice") -> str:
    client = Client(await backend.redis(), backend.store, backend.settings, tenant=tenant)
    batch = await client.submit_batch([NewJob("one", chat(text, strategy="cost"))])
    await backend.run_worker(catalog=make_catalog(TRIO))
    [job] = [j async for j in client.results(batch)]
    assert job.status is JobStatus.SUCCEEDED
    return job.id


async def test_evidence_counts_once_however_often_it_is_recorded(backend: Backend) -> None:
    store = backend.store
    answers = [ScoredAnswer("judge", f"job-{i}", Evidence("a", GENERAL, LOW, 0.5)) for i in range(3)]
    assert await store.quality.record(answers) == 3
    assert await store.quality.record(answers[:2]) == 0  # a redelivered evaluation adds nothing
    assert await store.quality.record([ScoredAnswer("reference", "job-0", answers[0].evidence)]) == 1
    [tally] = await store.quality.tallies()
    assert (tally.deployment, tally.samples, tally.total) == ("a", 4, 2.0)


async def test_feedback_is_history_and_evidence_for_the_deployment_that_answered(backend: Backend) -> None:
    job_id = await _one_job(backend)
    fleet = FleetQuality(await backend.redis(), backend.store, strength=10, refresh_s=60)
    before = await fleet.board()
    assert not before

    first = await fleet.add_feedback(tenant="acme", user_id="ana", job_id=job_id, rating=1, category="wrong")
    await fleet.add_feedback(tenant="acme", user_id="bo", job_id=job_id, thumbs="up", comment="fine")
    assert first.deployment == "cheap-a"
    board = await fleet.board()  # a writer in this process reads the new tallies at once
    assert board.samples("cheap-a") == 2

    history = await backend.store.quality.history("acme")
    assert [(f.user_id, f.rating, f.thumbs, f.score) for f in history] == [
        ("bo", None, "up", 1.0),
        ("ana", 1, None, 0.0),
    ]
    page = await backend.store.quality.history("acme", limit=1, before=history[0].id)
    assert [f.id for f in page] == [first.id]
    assert await backend.store.quality.history("other") == []
    with pytest.raises(NotFoundError):  # another tenant's job is not found
        await fleet.add_feedback(tenant="other", user_id="x", job_id=job_id, rating=5)
    with pytest.raises(NotFoundError):
        await fleet.add_feedback(tenant="acme", user_id="x", job_id="job_nope", rating=5)


async def test_other_processes_see_new_evidence_once_their_board_is_due(backend: Backend) -> None:
    now = [0.0]
    redis = await backend.redis()
    reader = FleetQuality(redis, backend.store, strength=10, refresh_s=5, clock=lambda: now[0])
    writer = FleetQuality(redis, backend.store, strength=10, refresh_s=5)
    assert not await reader.board()
    await writer.record([ScoredAnswer("judge", "j1", Evidence("a", GENERAL, LOW, 0.2))])
    assert not await reader.board()  # planned with what it read, for refresh_s
    now[0] = 5.0
    assert (await reader.board()).samples("a") == 1


async def test_client_plan_sees_forced_states_and_learned_scores(backend: Backend) -> None:
    catalog = make_catalog(TRIO)
    redis = await backend.redis()
    plans = Client(redis, backend.store, backend.settings, tenant="acme")
    request = chat(strategy="quality")
    assert (await plans.plan(request, catalog=catalog)).primary.deployment == "smart-c"

    await RedisFleetState(redis).force("smart-c", Forced.DOWN)
    answers = [ScoredAnswer("judge", f"j{i}", Evidence("cheap-a", GENERAL, LOW, 1.0)) for i in range(50)]
    await FleetQuality(redis, backend.store, strength=10).record(answers)
    plan = await plans.plan(request, catalog=catalog)
    assert [(e.deployment, e.reason.value) for e in plan.excluded] == [("smart-c", "forced_down")]
    assert plan.primary.deployment == "cheap-a"  # learned 0.93 > fast-b's prior 0.75
    assert (plan.primary.quality_source, plan.primary.quality_samples) == ("learned", 50)
    assert await redis.zcard(backend.settings.queue_name) == 0  # a plan queues nothing
