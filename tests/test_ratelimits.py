"""Per-key and per-tenant rate limits: the Redis buckets, the API's 429s and headers, and a key's
rpm holding across two `routeq serve` processes on one Redis.

The bucket tests use a limiter on both backends; burst and refill are chosen so the few
milliseconds a test takes refill nothing that matters (rpm 5 refills one request per 12 s).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from typer.testing import CliRunner

from producer.cli import app
from storage.fleet.ratelimits import RateLimiter, RateLimits
from storage.sql.store import Store
from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend, open_backend
from tests.fleet import PROCESS_TEST_TIMEOUT_S, fleet, free_port, until

PROMPT = [{"role": "user", "content": "Name a lighthouse"}]


async def test_a_key_gets_its_burst_then_waits_for_the_refill(backend: Backend) -> None:
    limiter = RateLimiter(await backend.redis())
    key = {"key:k1": RateLimits(rpm=6, burst=3)}
    assert [(await limiter.take(key, 0)).allowed for _ in range(4)] == [True, True, True, False]
    refused = await limiter.take(key, 0)
    assert 9 <= refused.retry_after_s <= 10  # one request per 10 s at 6 rpm
    [bucket] = refused.buckets
    assert (bucket.limit, bucket.remaining) == (6, 0)

    tokens = {"key:k2": RateLimits(tpm=100)}
    assert (await limiter.take(tokens, 60)).allowed
    short = await limiter.take(tokens, 60)
    assert not short.allowed
    assert 11 <= short.retry_after_s <= 13  # 20 more tokens at 100 per minute
    assert (await limiter.take(tokens, 150)).too_large


async def test_a_tenants_limit_holds_over_all_its_keys_and_a_refusal_takes_nothing(backend: Backend) -> None:
    limiter = RateLimiter(await backend.redis())
    tenant = RateLimits(rpm=60, burst=2)
    first = {"key:a": RateLimits(), "tenant:acme": tenant}
    second = {"key:b": RateLimits(rpm=60, burst=5), "tenant:acme": tenant}
    assert (await limiter.take(first, 0)).allowed
    assert (await limiter.take(second, 0)).allowed
    refused = await limiter.take(second, 0)
    assert not refused.allowed
    # The key's own bucket was not charged for the refused request: 4 of its 5 are left.
    assert {b.scope: b.remaining for b in refused.buckets}["key:b"] == 4
    assert (await limiter.take({"key:b": RateLimits(rpm=60, burst=5)}, 0)).allowed


@pytest.fixture(params=["embedded", "services"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveApi]:
    async with (
        open_backend(request.param, tmp_path) as backend,
        serve_api(backend, api_wait_timeout_s=15) as live,
    ):
        yield live


async def test_the_api_answers_429_with_retry_after_and_openai_headers(api: LiveApi) -> None:
    _, secret = await api.backend.store.api_keys.create(
        tenant="acme", user_id="u1", limits=RateLimits(rpm=30, tpm=2_000, burst=2)
    )
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx2.AsyncClient(base_url=api.url, headers=headers, timeout=15) as http:
        chat = await http.post(
            "/v1/chat/completions", json={"model": "auto", "messages": PROMPT, "max_tokens": 50}
        )
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-ratelimit-limit-requests"] == "30"
        assert chat.headers["x-ratelimit-remaining-requests"] == "1"
        assert chat.headers["x-ratelimit-limit-tokens"] == "2000"
        assert int(chat.headers["x-ratelimit-remaining-tokens"]) < 2000 - 50
        ok = await http.post("/v1/route", json={"model": "auto", "messages": PROMPT})
        assert ok.status_code == 200, ok.text
        refused = await http.post("/v1/route", json={"model": "auto", "messages": PROMPT})
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 2  # one request per 2 s at 30 rpm
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        too_large = await http.post("/v1/jobs", json={"prompt": "hi", "max_tokens": 5_000})
        assert too_large.status_code == 429, too_large.text
        assert "max_tokens" in too_large.json()["error"]["message"]


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT_S)
async def test_a_keys_rpm_holds_across_two_api_processes(tmp_path: Path) -> None:
    if not os.environ.get("ROUTEQ_TEST_REDIS_URL") and not os.environ.get("CI"):
        pytest.skip("needs the real Redis and PostgreSQL (ROUTEQ_TEST_REDIS_URL, ROUTEQ_TEST_DATABASE_URL)")
    async with open_backend("services", tmp_path) as services, fleet(tmp_path) as procs:
        _, secret = await services.store.api_keys.create(
            tenant="acme", user_id="u1", limits=RateLimits(rpm=5, burst=5)
        )
        ports = [free_port(), free_port()]
        for n, port in enumerate(ports):
            procs.api(f"api-{n}", services.settings, port)
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:

            async def both_up() -> bool:
                try:
                    answers = [await http.get(f"{url}/health") for url in urls]
                except httpx2.TransportError:
                    return False
                return all(a.status_code == 200 for a in answers)

            await until(both_up, timeout_s=60, what="two `routeq serve` processes to answer /health")
            answers = await asyncio.gather(
                *(http.post(f"{urls[i % 2]}/v1/jobs", json={"prompt": f"question {i}"}) for i in range(12))
            )
        codes = sorted(a.status_code for a in answers)
        assert codes == [202] * 5 + [429] * 7, [a.text for a in answers if a.status_code not in (202, 429)]
        assert {a.headers.get("Retry-After") is not None for a in answers if a.status_code == 429} == {True}
        assert {a.url.port for a in answers} == set(ports)  # both processes answered


def test_the_cli_sets_a_keys_and_a_tenants_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'routeq.db'}"
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", url)
    runner = CliRunner()
    made = runner.invoke(
        app, ["keys", "create", "--tenant", "acme", "--user", "u1", "--rpm", "10", "--burst", "3"]
    )
    assert made.exit_code == 0, made.output
    match = re.search(r"key (key_\w+)", made.output)
    assert match is not None
    changed = runner.invoke(app, ["keys", "limit", match[1], "--tpm", "500"])
    assert changed.exit_code == 0, changed.output
    assert "tpm 500" in changed.output
    assert runner.invoke(app, ["keys", "tenant-limit", "acme", "--rpm", "100"]).exit_code == 0
    unknown = runner.invoke(app, ["keys", "limit", "key_nope", "--rpm", "1"])
    assert unknown.exit_code == 1
    assert "no API key" in unknown.output

    async def read() -> tuple[RateLimits, RateLimits]:
        store = await Store.open(url)
        try:
            [key] = await store.api_keys.list(tenant="acme")
            return key.limits, await store.api_keys.tenant_limits("acme")
        finally:
            await store.close()

    key_limits, tenant_limits = asyncio.run(read())
    assert key_limits == RateLimits(tpm=500)  # a limit left out is lifted
    assert tenant_limits == RateLimits(rpm=100)
