"""The semantic cache end to end, on both backends (sqlite-vec; PostgreSQL's index in CI): a
paraphrase is served the earlier answer with its similarity, an unrelated prompt is not, tenants
never share, and the embedding call is billed once as the job's first attempt.
"""

from __future__ import annotations

from typing import Any

import pytest

from producer.client import Client
from router_core.cache import CachePreference
from router_core.models import ChatRequest, Message, Preferences
from router_core.providers import sim_world_for
from storage.jobs import JobRecord, JobStatus, NewJob
from tests import test_cache
from tests.backends import Backend
from tests.conftest import TRIO, deployment, make_catalog

EMBEDDER = deployment(
    "embed-e", task="embedding", dimensions=256, price={"input_per_mtok": 0.02, "output_per_mtok": 0.0}
)
SEMANTIC = Preferences(cache=CachePreference(semantic=True))


# The cache tests' backends: both, with the cache on.
cached = test_cache.cached


class World:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.catalog = make_catalog([*TRIO, EMBEDDER])
        self.sim = sim_world_for(self.catalog)

    def calls(self, *, embeddings: bool = False) -> int:
        return sum(
            stats.requests for dep, stats in self.sim.stats.items() if (dep == "embed-e") == embeddings
        )

    async def ask(self, text: str, *, tenant: str = "acme", **kwargs: Any) -> JobRecord:
        client = Client(await self.backend.redis(), self.backend.store, self.backend.settings, tenant=tenant)
        request = ChatRequest(messages=[Message(role="user", content=text)], **kwargs)
        batch_id = await client.submit_batch([NewJob("q", request)])
        await self.backend.run_worker(catalog=self.catalog, sim_world=self.sim)
        [job] = [job async for job in client.results(batch_id)]
        assert job.status is JobStatus.SUCCEEDED, job.error
        return job


@pytest.fixture
def world(cached: Backend) -> World:
    return World(cached)


async def test_a_paraphrase_is_served_the_answer_and_an_unrelated_prompt_is_not(world: World) -> None:
    first = await world.ask("What's the capital of France?", preferences=SEMANTIC)
    assert first.cache_source is None
    assert world.calls() == 1
    assert world.calls(embeddings=True) == 1

    paraphrase = await world.ask("Tell me the capital of France, please.", preferences=SEMANTIC)
    assert paraphrase.cache_source == first.id
    assert paraphrase.cache_similarity is not None
    assert paraphrase.cache_similarity >= 0.95
    assert paraphrase.result is not None
    assert first.result is not None
    assert paraphrase.result["choices"] == first.result["choices"]
    assert paraphrase.result["cache"]["similarity"] == paraphrase.cache_similarity
    assert world.calls() == 1  # no chat call: only the embedding

    unrelated = await world.ask("How do volcanoes erupt under the sea?", preferences=SEMANTIC)
    assert unrelated.cache_source is None
    assert world.calls() == 2

    exact_only = await world.ask("what is the capital of france", preferences=Preferences())
    assert exact_only.cache_source is None  # the semantic cache is opt-in: without it, a miss
    assert world.calls() == 3


async def test_the_embedding_call_is_billed_once_as_the_first_attempt(world: World) -> None:
    first = await world.ask("What's the capital of France?", preferences=SEMANTIC)
    hit = await world.ask("what is the capital of france", preferences=SEMANTIC)
    store = world.backend.store
    for job, deployments in ((first, ["embed-e", first.deployment]), (hit, ["embed-e"])):
        ledger = await store.ledger.rows(job_id=job.id)
        assert [row["deployment"] for row in ledger] == deployments
        assert [row["attempt_no"] for row in ledger] == list(range(1, len(deployments) + 1))
        assert job.cost_usd == sum(row["cost_usd"] for row in ledger)
    assert hit.cost_usd is not None
    assert first.cost_usd is not None
    assert 0 < hit.cost_usd < first.cost_usd  # a semantic hit costs its embedding only
    assert hit.saved_usd is not None
    assert hit.saved_usd > 0


async def test_a_tenant_never_gets_another_tenants_answer_by_meaning(world: World) -> None:
    await world.ask("What's the capital of France?", tenant="acme", preferences=SEMANTIC)
    other = await world.ask("Tell me the capital of France, please.", tenant="globex", preferences=SEMANTIC)
    assert other.cache_source is None
    assert world.calls() == 2


async def test_requests_alike_but_for_their_settings_are_not_compared(world: World) -> None:
    await world.ask("What's the capital of France?", preferences=SEMANTIC)
    seeded = await world.ask("Tell me the capital of France, please.", seed=7, preferences=SEMANTIC)
    assert seeded.cache_source is None  # another seed: another group of requests
    assert world.calls() == 2


async def test_a_paraphrase_hit_still_meets_the_requests_constraints(world: World) -> None:
    cheap = Preferences(strategy="cost", cache=CachePreference(semantic=True))
    first = await world.ask("What's the capital of France?", preferences=cheap)
    assert first.deployment == "cheap-a"
    strict = Preferences(strategy="cost", min_quality=0.9, cache=CachePreference(semantic=True))
    better = await world.ask("Tell me the capital of France, please.", preferences=strict)
    assert better.cache_source is None
    assert better.deployment == "smart-c"
