"""Must-show (issue 15): evaluations and feedback make a deployment that oversells itself lose traffic.

"liar" says quality 0.9 in the catalog but a judge scores its answers as a 0.5 model's; "honest"
says 0.8 and is judged 0.8. The `quality` strategy first sends everything to liar. Then the fleet's
own automatic evaluations (the eval beat, sample rate 1.0, a simulated judge deployment) grade the
answered jobs through the queue — real burst workers run the judge jobs, which are billed to the
tenant's eval scope — and a user's thumbs-down adds feedback. The learned scores move, and the
next batch goes to honest.

The plan is not stored per job (a job keeps the deployment that answered and the strategy, not
the ranked candidates), so the plan naming the learned score and its sample count is asserted on
`Router.plan` over the fleet's board (`FleetQuality`, what every worker plans with).
"""

from __future__ import annotations

import pytest

from producer.client import Client
from router_core.classify import classify
from router_core.models import ChatRequest, Complexity, Message, Preferences
from router_core.providers import sim_world_for
from router_core.router import Router
from storage.fleet.budgets import Budgets, eval_scope
from storage.fleet.quality import FleetQuality
from storage.jobs import JobStatus, NewJob
from tests.backends import Backend
from tests.conftest import deployment, make_catalog
from workers.evals import EvalBeat

PROMPTS = [f"Explain why the {thing} behaves the way it does" for thing in ("sky", "sea", "moon", "tide")]
PROMPTS += [f"Explain why {n} users churned last quarter" for n in range(6)]


def ask(text: str) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="user", content=text)], preferences=Preferences(strategy="quality")
    )


async def test_judged_and_rated_answers_move_quality_traffic_from_the_liar_to_the_honest(
    backend: Backend,
) -> None:
    assert {classify(p).complexity for p in PROMPTS} == {Complexity.MEDIUM}  # where the gap shows fully
    catalog = make_catalog(
        [
            deployment("liar", quality=0.9, sim={"judged_quality": 0.5}),
            deployment("honest", quality=0.8),
            deployment("judge", quality=0.5, sim={"judge": True}),
        ]
    )
    world = sim_world_for(catalog)
    # The test beats itself (the workers' own beat, random phase, is tested in test_evals.py).
    evals = backend.settings.model_copy(update={"eval_judge": "judge", "eval_sample_rate": 1.0})
    redis = await backend.redis()
    client = Client(redis, backend.store, backend.settings, tenant="acme")

    first = await client.submit_batch([NewJob(f"q{i}", ask(p)) for i, p in enumerate(PROMPTS)])
    await backend.run_worker(catalog=catalog, sim_world=world)
    answered = [job async for job in client.results(first)]
    assert {job.deployment for job in answered} == {"liar"}

    # One beat of the fleet's automatic evaluations: every answered job goes to the judge, as jobs.
    beat = EvalBeat.from_settings(redis, backend.store, client.events_bus, catalog, evals, holder="t")
    assert beat is not None
    tick = await beat.tick()
    assert tick is not None
    assert sorted(tick.judged) == sorted(job.id for job in answered)
    await backend.run_worker(catalog=catalog, sim_world=world)
    [eval_batch] = tick.batches
    judged = [job async for job in client.results(eval_batch)]
    assert {(job.status, job.deployment, job.user_id) for job in judged} == {
        (JobStatus.SUCCEEDED, "judge", "routeq-eval")
    }
    # Billed and recorded like any call: the ledger has the judge's calls, the eval scope their cost.
    judge_cost = sum(float(job.cost_usd or 0) for job in judged)
    assert judge_cost > 0
    usage = await Budgets(redis).usage(eval_scope("acme"))
    assert usage.spent_usd == pytest.approx(judge_cost, abs=1e-5)
    rebuilt = await Budgets(redis).rebuild_from_ledger(backend.store)  # the ledger maps them the same way
    assert rebuilt[eval_scope("acme")] == pytest.approx(usage.spent_usd)
    assert not any(scope.endswith("/routeq-eval") for scope in rebuilt)
    # Judge jobs are never judged themselves, and a job is judged once.
    await redis.delete("routeq:evals:beat")  # the next beat comes at once, not an interval later
    again = await beat.tick()
    assert again is not None
    assert again.judged == []

    fleet = FleetQuality(redis, backend.store, strength=10, refresh_s=0)
    for job in answered[:2]:
        await fleet.add_feedback(tenant="acme", user_id="u1", job_id=job.id, thumbs="down")

    second = await client.submit_batch([NewJob(f"r{i}", ask(p)) for i, p in enumerate(PROMPTS[:4])])
    await backend.run_worker(catalog=catalog, sim_world=world)
    assert {job.deployment async for job in client.results(second)} == {"honest"}

    router = Router.from_settings(backend.settings, catalog=catalog, sim_world=world, quality=fleet)
    try:
        plan = await router.plan(ask(PROMPTS[0]))
    finally:
        await router.aclose()
    honest, liar = plan.candidates[0], next(c for c in plan.candidates if c.deployment == "liar")
    assert honest.deployment == "honest"
    assert (liar.quality_source, liar.quality_samples) == ("learned", len(PROMPTS) + 2)
    # 10 judged near 0.5 and 2 thumbs down (0) against 10 pseudo-samples of the catalog's 0.9.
    assert liar.quality is not None
    assert liar.quality == pytest.approx((10 * 0.9 + 0.5 * len(PROMPTS)) / (10 + len(PROMPTS) + 2), abs=0.02)
    assert liar.quality < honest.quality  # type: ignore[operator]
