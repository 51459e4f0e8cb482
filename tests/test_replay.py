"""Strategy replay: a finished batch re-planned under other strategies, next to what happened.

The engine is pure (`router_core.replay`); `storage.sql.replay.replay_batch` streams a stored batch
through it, here on both backends; the CLI prints it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fakeredis import FakeServer
from typer.testing import CliRunner

from producer.cli import app
from producer.client import Client
from router_core.errors import InvalidRequestError
from router_core.models import Capability, ChatRequest, Complexity, Message, Preferences
from router_core.planner import build_plan
from router_core.quality import Evidence, QualityBoard
from router_core.replay import Replay, ReplayJob, parse_variants
from storage.connections import embedded_redis
from storage.errors import NotFoundError
from storage.jobs import ANY_TENANT, JobStatus, NewJob
from storage.sql.quality import ScoredAnswer
from storage.sql.replay import replay_batch
from storage.sql.store import Store
from tests.backends import Backend, pipeline_settings
from tests.conftest import TRIO, make_catalog

EASY = ["What is the capital of France?", "Who wrote Hamlet?", "What is 2+2?"]


def chat(text: str, max_tokens: int | None = None, **prefs: object) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="user", content=text)], max_tokens=max_tokens, preferences=Preferences(**prefs)
    )


def test_strategies_parse_with_aliases_and_escalate_modes() -> None:
    variants = parse_variants("cost, FAST,escalate:fast,escalate,cost")
    assert [(v.name, v.strategy.value) for v in variants] == [
        ("cost", "cost"),
        ("fast", "speed"),
        ("escalate:fast", "escalate"),
        ("escalate", "escalate"),
    ]
    assert variants[2].escalation is not None
    assert variants[2].escalation.mode == "fast"
    for bad, message in [
        ("cost,cheapest", "unknown strategy 'cheapest'"),
        ("quality:fast", "only escalate takes a mode"),
        ("escalate:reckless", "only escalate takes a mode"),
        ("fallback_chain", "own chain"),
        (" , ", "no strategy"),
    ]:
        with pytest.raises(InvalidRequestError, match=message) as caught:
            parse_variants(bad)
        assert caught.value.field == "strategies"


def test_each_strategy_is_summed_from_its_primaries_and_the_actual_row_from_the_jobs() -> None:
    catalog = make_catalog(TRIO)
    board = QualityBoard()
    replay = Replay(catalog, board, parse_variants("cost,quality"))
    requests = [chat(text, strategy="cost", max_tokens=100) for text in EASY]
    for request in requests:
        replay.add(ReplayJob(request, "cheap-a", cost_usd=0.001, latency_ms=100.0))
    replay.add(ReplayJob(chat("Tell me a joke", max_cost_per_request=1e-9), None, 0.0, None))
    report = replay.report()

    quality = report.row("quality")
    assert (quality.jobs, quality.unroutable) == (3, 1)  # no deployment is that cheap under any strategy
    assert quality.mix == [("smart-c", 1.0)]
    expected = sum(build_plan(r, catalog, {}).candidates[-1].estimated_cost_usd for r in requests)
    assert quality.cost_usd == pytest.approx(expected)
    assert quality.mean_latency_ms == 1500  # smart-c's catalog latency
    assert quality.mean_quality == pytest.approx(0.95)
    assert report.row("cost").mix == [("cheap-a", 1.0)]
    # "submitted" re-plans the jobs' own preferences (cost here): the estimate to compare against.
    assert report.row("submitted").cost_usd == pytest.approx(report.row("cost").cost_usd)
    actual = report.row("actual")
    assert (actual.jobs, actual.unroutable, actual.mean_latency_ms) == (3, 1, 100.0)
    assert actual.cost_usd == pytest.approx(0.003)
    assert actual.mean_quality == pytest.approx(0.6)
    assert [r.name for r in report.rows] == ["cost", "quality", "submitted", "actual"]


async def test_a_stored_batch_replays_with_the_fleets_learned_quality(backend: Backend) -> None:
    client = Client(await backend.redis(), backend.store, backend.settings, tenant="acme")
    items = [NewJob(f"q{i}", chat(text, strategy="cost", max_tokens=50)) for i, text in enumerate(EASY)]
    batch = await client.submit_batch(items)
    catalog = make_catalog(TRIO)
    await backend.run_worker(catalog=catalog)
    jobs = [j async for j in client.results(batch)]
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}
    # Judges found the cheap model as good as the strong one on easy prompts.
    judged = [("cheap-a", 0.97), ("fast-b", 0.97), ("smart-c", 0.98)]
    await backend.store.quality.record(
        [
            ScoredAnswer("judge", f"{dep}-{i}", Evidence(dep, Capability.SIMPLE_QA, Complexity.LOW, score))
            for dep, score in judged
            for i in range(30)
        ]
    )

    variants = parse_variants("quality,escalate:fast")
    report = await replay_batch(backend.store, batch, catalog=catalog, variants=variants, strength=10)
    assert report.jobs == 3
    actual = report.row("actual")
    assert actual.cost_usd == pytest.approx(float(sum(j.cost_usd or 0 for j in jobs)))
    assert actual.mix == [("cheap-a", 1.0)]
    # Learned, (10 * 0.6 + 30 * 0.97) / 40, not the catalog's 0.6.
    assert actual.mean_quality == pytest.approx(0.8775)
    assert report.row("quality").mix == [("smart-c", 1.0)]
    escalate = report.row("escalate:fast")
    assert escalate.mix == [("cheap-a", 1.0)]  # good enough on easy prompts: the cheapest
    assert escalate.cost_usd < report.row("quality").cost_usd / 50

    with pytest.raises(NotFoundError):
        await replay_batch(backend.store, "batch_nope", catalog=catalog, variants=variants, strength=10)
    with pytest.raises(NotFoundError):  # another tenant's batch is not found
        await replay_batch(
            backend.store, batch, catalog=catalog, variants=variants, strength=10, tenant="other"
        )
    assert (await backend.store.batches.get(batch, tenant=ANY_TENANT)).total == 3


async def test_the_command_prints_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pipeline_settings(redis_url=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/routeq.db")
    store = await Store.open(settings.database_url)
    redis = embedded_redis(settings, FakeServer())
    try:
        client = Client(redis, store, settings, tenant="acme")
        batch = await client.submit_batch([NewJob("q", chat(EASY[0], strategy="cost"))])
    finally:
        await redis.aclose()
        await store.close()
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", settings.database_url)
    args = ["replay", batch, "--strategies", "cost,speed", "--json"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)  # the command runs its own loop
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert view["batch"] == batch
    assert [row["strategy"] for row in view["strategies"]] == ["cost", "speed", "submitted", "actual"]
    assert view["strategies"][-1]["unroutable"] == 1  # queued, never answered
    cheapest = {"deployment": "gemini-2.0-flash", "share": 1.0}  # the demo catalog's, for this prompt
    assert view["strategies"][0]["mix"] == [cheapest]
