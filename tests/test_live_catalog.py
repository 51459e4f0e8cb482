"""The live catalog (issue 18): versions in SQL, seeded from the TOML file, picked up by running processes.

Export writes TOML that loads back into the same catalog; the file seeds version 1 and seeds again
only when its content changed; a running worker (not burst) routes to an added deployment and stops
calling a disabled or removed one within the documented bound (`catalog_refresh_s`), measured here
by waiting on the condition, both through the channel and without it (a lost message: the poll).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from producer.client import Client
from router_core import catalog_edit
from router_core.catalog import load_catalog, read_catalog_document
from router_core.clock import FakeClock
from router_core.models import ChatRequest, Message
from storage import keys
from storage.fleet.catalog import LiveCatalog, commit_change, seed_catalog
from storage.jobs import JobStatus, NewJob
from tests import test_cache
from tests.backends import Backend
from tests.conftest import TRIO, deployment
from tests.fleet import until
from workers.context import Shared, worker_context
from workers.worker import RouteqWorker, build_worker, run_worker

# The bound a test process runs with: short, so the poll path is measured quickly.
REFRESH_S = 0.5
PROMPT = [{"role": "user", "content": "Name a lighthouse"}]


def write_catalog(path: Path, deployments: list[dict[str, Any]]) -> Path:
    path.write_text(catalog_edit.to_toml({"deployments": deployments}), "utf-8")
    return path


def test_export_writes_toml_that_loads_back_into_the_same_catalog(tmp_path: Path) -> None:
    demo, _ = read_catalog_document(None)
    odd = deployment(
        "odd-x",
        enabled=False,
        capabilities=["code"],
        sim={"latency_ms": 5, "error_rate": 0.5},
        provider='quo"te\\back',
        rate_window_s=1.5,
    )
    for document in (demo, {"deployments": [*TRIO, odd]}):
        text = catalog_edit.to_toml(document, header="exported\nfor a test")
        path = tmp_path / "export.toml"
        path.write_text(text, "utf-8")
        back = load_catalog(path)
        assert back.deployments() == catalog_edit.validate(document).deployments()
        assert read_catalog_document(path)[0] == document
    assert back["odd-x"].enabled is False


async def test_the_file_seeds_version_1_and_again_only_when_its_content_changes(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = await backend.redis()
    path = write_catalog(tmp_path / "catalog.toml", TRIO)
    first = await seed_catalog(backend.store, redis, path)
    assert first is not None
    assert first.version == 1
    assert first.author == "seed"
    assert int(await redis.get(keys.CATALOG_VERSION)) == 1

    def edit(doc: catalog_edit.Document) -> Any:
        return catalog_edit.change(doc, "fast-b", {"rpm": 77})

    stored, catalog = await commit_change(backend.store, redis, edit, author="ops", comment="tighter")
    assert (stored.version, catalog["fast-b"].rpm) == (2, 77)
    assert await seed_catalog(backend.store, redis, path) is None  # same file: the live change stays
    assert (await backend.store.catalog.newest()).version == 2  # type: ignore[union-attr]

    write_catalog(path, [*TRIO, deployment("new-d")])
    with caplog.at_level(logging.INFO, logger="routeq.catalog"):
        third = await seed_catalog(backend.store, redis, path)
    assert third is not None
    assert third.version == 3
    assert "changed since it last seeded" in caplog.text
    history = await backend.store.catalog.history()
    assert [(v.version, v.author, v.seed_hash is not None) for v in history] == [
        (3, "seed", True),
        (2, "ops", False),
        (1, "seed", True),
    ]
    assert history[1].comment == "tighter"


async def test_a_change_against_an_old_version_is_refused_and_concurrent_ones_both_land(
    backend: Backend, tmp_path: Path
) -> None:
    redis = await backend.redis()
    await seed_catalog(backend.store, redis, write_catalog(tmp_path / "c.toml", TRIO))

    def setting(dep: str, **fields: Any) -> Any:
        return lambda doc: catalog_edit.change(doc, dep, fields)

    from storage.errors import CatalogConflictError  # noqa: PLC0415

    # Two writers made against version 1: one wins, the other is told, nothing is overwritten.
    results = await asyncio.gather(
        commit_change(backend.store, redis, setting("fast-b", rpm=1), author="a", expected=1),
        commit_change(backend.store, redis, setting("cheap-a", rpm=2), author="b", expected=1),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["CatalogConflictError", "tuple"]
    assert any(isinstance(r, CatalogConflictError) and r.newest == 2 for r in results)
    # Without an expected version each change is applied on top of the newest: both land.
    await asyncio.gather(
        commit_change(backend.store, redis, setting("smart-c", rpm=3), author="a"),
        commit_change(backend.store, redis, setting("smart-c", tpm=4000), author="b"),
    )
    newest = await backend.store.catalog.newest()
    assert newest is not None
    assert newest.version == 4
    smart = catalog_edit.validate(newest.document)["smart-c"]
    assert (smart.rpm, smart.tpm) == (3, 4000)


@asynccontextmanager
async def running_worker(backend: Backend, path: Path) -> AsyncIterator[RouteqWorker]:
    """A worker taking jobs until the block ends (not burst), following the live catalog."""
    backend.settings = backend.settings.model_copy(
        update={"catalog_path": path, "catalog_refresh_s": REFRESH_S}
    )
    worker = build_worker(
        backend.settings,
        redis=await backend.redis(),
        handle_signals=False,
        shared=Shared(store=backend.store),  # no catalog: start-up opens the live one
        poll_delay=0.01,
    )
    task = asyncio.create_task(run_worker(worker))
    try:
        await until(lambda: "routeq" in worker.ctx or task.done(), timeout_s=10, what="worker start-up")
        yield worker
    finally:
        worker.handle_sig(signal.SIGINT)
        await task


async def picked_up(worker: RouteqWorker, check: Any) -> float:
    """Seconds until the worker's router sees `check(catalog)` true (waited on, not slept)."""
    started = time.monotonic()
    router = worker_context(worker.ctx).runner.router
    await until(
        lambda: check(router.catalog), timeout_s=REFRESH_S * 10, what="the catalog change", every_s=0.005
    )
    return time.monotonic() - started


async def test_a_running_worker_uses_a_change_within_the_bound_without_a_restart(
    backend: Backend, tmp_path: Path
) -> None:
    redis = await backend.redis()
    path = write_catalog(tmp_path / "catalog.toml", TRIO)
    async with running_worker(backend, path) as worker:
        client = Client(await backend.redis(), backend.store, backend.settings)

        async def answer(**request: Any) -> Any:
            job = await client.wait(await client.submit({"messages": PROMPT, **request}))
            return job, [
                a["deployment"] for a in await backend.store.jobs.attempts(job.id, tenant=client.scope)
            ]

        before, _ = await answer(model="new-d")
        assert before.status is JobStatus.FAILED  # not in the catalog yet

        # Added: announced on the channel, so picked up at once (well within the bound).
        new = deployment("new-d", quality=0.99, latency_ms=100)
        await commit_change(backend.store, redis, lambda doc: catalog_edit.add(doc, new), author="t")
        added_s = await picked_up(worker, lambda cat: "new-d" in cat)
        job, calls = await answer(model="new-d")
        assert (job.status, job.deployment, calls) == (JobStatus.SUCCEEDED, "new-d", ["new-d"])

        # Disabled: never called again; a request naming it has no route.
        disable = lambda doc: catalog_edit.change(doc, "fast-b", {"enabled": False})  # noqa: E731
        await commit_change(backend.store, redis, disable, author="t")
        disabled_s = await picked_up(worker, lambda cat: not cat["fast-b"].enabled)
        pinned, calls = await answer(model="fast-b")
        assert pinned.status is JobStatus.FAILED
        assert calls == []
        fastest, calls = await answer(preferences={"strategy": "speed"})
        assert fastest.status is JobStatus.SUCCEEDED
        assert "fast-b" not in calls

        # Removed, and the message lost: the poll of the version key finds it within the bound.
        stored = await backend.store.catalog.newest()
        assert stored is not None
        document, _ = catalog_edit.remove(stored.document, "cheap-a")
        await backend.store.catalog.commit(document, after=stored.version, author="t")
        await redis.set(keys.CATALOG_VERSION, stored.version + 1)  # raised, never published
        removed_s = await picked_up(worker, lambda cat: "cheap-a" not in cat)
        cheapest, calls = await answer(preferences={"strategy": "cost"})
        assert cheapest.status is JobStatus.SUCCEEDED
        assert "cheap-a" not in calls

        assert max(added_s, disabled_s) < REFRESH_S, (added_s, disabled_s)
        assert removed_s < REFRESH_S + 0.25, removed_s  # the bound, plus one refresh's own work
        await client.close()


async def test_a_plan_made_before_a_swap_calls_nothing_removed_since(make_router: Any) -> None:
    """The router's swap itself, without storage: a plan made before it, walked after it."""
    from router_core.models import ChatRequest  # noqa: PLC0415

    router = make_router(catalog_edit.validate({"deployments": TRIO}))
    request = ChatRequest.model_validate({"messages": PROMPT, "preferences": {"strategy": "cost"}})
    plan = await router.plan(request)
    assert [c.deployment for c in plan.candidates][:2] == ["cheap-a", "fast-b"]

    document, _ = catalog_edit.remove({"deployments": TRIO}, "cheap-a")
    dearer = {"price": {"input_per_mtok": 100, "output_per_mtok": 400}}
    _, repriced = catalog_edit.change(document, "fast-b", dearer)
    kept, changed = router.providers["smart-c"], router.providers["fast-b"]
    router.use_catalog(repriced)
    assert "cheap-a" not in router.providers
    assert router.providers["smart-c"] is kept  # unchanged: its adapter stays
    assert router.providers["fast-b"] is not changed  # changed: a new adapter

    walked = await router.complete(request, plan=plan)  # planned before the swap
    assert [a.deployment for a in walked.attempts] == ["fast-b"]  # cheap-a is gone: never called
    fresh = await router.complete(request)
    assert fresh.deployment == "smart-c"  # fast-b is now the dearer one


cached = test_cache.cached  # a backend with the response cache on


async def test_no_cached_answer_of_a_disabled_deployment_is_served(cached: Backend) -> None:
    pipeline = test_cache.Pipeline(cached)
    client = await pipeline.client()
    cheapest = [NewJob("q", test_cache.chat("Name a lighthouse", preferences={"strategy": "cost"}))]
    (first,) = await pipeline.run(client, cheapest)
    (again,) = await pipeline.run(client, cheapest)
    assert (first.deployment, again.cache_source) == ("cheap-a", first.id)  # the cache serves it

    _, pipeline.catalog = catalog_edit.change({"deployments": TRIO}, "cheap-a", {"enabled": False})
    (after,) = await pipeline.run(client, cheapest)
    assert after.cache_source is None  # not cheap-a's answer: a call to another deployment
    assert after.deployment == "fast-b"


async def test_an_embedded_process_reads_sqls_version_when_nothing_is_announced(
    backend: Backend, tmp_path: Path
) -> None:
    """`routeq run` has an in-process Redis nobody else writes to: a CLI change (no ROUTEQ_REDIS_URL,
    so nothing is announced) reaches it through SQL's newest version number, within the bound."""
    path = write_catalog(tmp_path / "catalog.toml", TRIO)
    redis = await backend.redis()
    live = await LiveCatalog.open(redis, backend.store, seed_path=path, refresh_s=REFRESH_S, poll_sql=True)
    try:
        new = deployment("new-d")
        await commit_change(backend.store, None, lambda doc: catalog_edit.add(doc, new), author="cli")
        assert int(await redis.get(keys.CATALOG_VERSION)) == 1  # nothing announced version 2
        started = time.monotonic()
        await until(lambda: live.version == 2, timeout_s=REFRESH_S * 10, what="the SQL poll", every_s=0.005)
        assert time.monotonic() - started < REFRESH_S + 0.25
        assert "new-d" in live.current
    finally:
        await live.close()


async def test_a_route_preview_plans_over_the_live_catalog(backend: Backend, tmp_path: Path) -> None:
    """`Client.plan` (and `routeq plan`, `POST /v1/route`) plans as workers do: a deployment removed
    from the live catalog is in no preview, though the catalog file still names it."""
    redis = await backend.redis()
    path = write_catalog(tmp_path / "c.toml", TRIO)
    await seed_catalog(backend.store, redis, path)
    settings = backend.settings.model_copy(update={"catalog_path": str(path)})
    client = Client(redis, backend.store, settings)
    request = ChatRequest(messages=[Message(role="user", content="hi")])
    assert {c.deployment for c in (await client.plan(request)).candidates} == {"cheap-a", "fast-b", "smart-c"}

    await commit_change(backend.store, redis, lambda doc: catalog_edit.remove(doc, "smart-c"), author="t")
    plan = await client.plan(request)
    assert {c.deployment for c in plan.candidates} == {"cheap-a", "fast-b"}
    assert "smart-c" not in {e.deployment for e in plan.excluded}


async def test_a_swapped_out_adapter_is_closed_once_no_walk_begun_before_can_call_it(
    make_router: Any, clock: FakeClock
) -> None:
    """A long-running worker's catalog changes do not pile up HTTP clients: a replaced adapter stays
    open while a walk begun before the swap may still call it, then the next swap closes it."""
    router = make_router(catalog_edit.validate({"deployments": TRIO}))
    replaced = router.providers["fast-b"]
    closed: list[object] = []

    async def record_close() -> None:
        closed.append(replaced)

    replaced.aclose = record_close
    for quality in (0.8, 0.9):  # two swaps, each changing fast-b: a new adapter each time
        _, changed = catalog_edit.change({"deployments": TRIO}, "fast-b", {"quality": quality})
        router.use_catalog(changed)
        assert closed == []  # within the span a walk begun before the first swap may last
    clock.advance(router.policy.longest_walk_s)
    router.use_catalog(catalog_edit.validate({"deployments": TRIO}))
    await until(lambda: closed == [replaced], timeout_s=5, what="the first replaced adapter to be closed")
