"""Tenant isolation of the HTTP API, on both backends.

Tenant acme makes one of everything (a job, a chat completion, an uploaded file, an OpenAI batch with
its output and error files) and the worker finishes it all. Then:

- tenant globex gets a 404 in the OpenAI error shape on every route that takes one of acme's ids,
  byte for byte the answer for an id that never existed (so a 404 leaks nothing), while acme gets a
  200 on each of those routes, and its two event streams replay the events and end;
- globex's lists and analytics hold none of acme's ids or numbers;
- a missing, unknown or revoked key is 401, an admin route without an admin key 403;
- no key's secret is stored (SQL or Redis) or logged: only its SHA-256 is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from storage import keys
from storage.sql.api_keys import hash_secret
from storage.sql.schema import metadata
from tests.api_harness import LiveApi, serve_api
from tests.backends import Backend

# Every wait here is bounded: a hung stream or a batch that never finishes fails the test, not the run.
WAIT_S = 15.0
TERMINAL = {"completed", "failed", "cancelled", "expired"}
BAD_LINE = '{"custom_id": "broken", "method": "POST", "url": "/v1/chat/completions", "body": {}}'


def batch_line(custom_id: str, text: str) -> str:
    body = {"model": "auto", "max_tokens": 40, "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


INPUT = (
    "\n".join([batch_line("q-0", "Name a lighthouse"), BAD_LINE, batch_line("q-1", "Name a bay")]) + "\n"
).encode()


@dataclass
class Acme:
    """What tenant acme made, every job of it finished, and a client for each tenant."""

    api: LiveApi
    acme: httpx2.AsyncClient
    globex: httpx2.AsyncClient
    secrets: list[str]  # every key made for the test: none may be stored or logged
    job_id: str  # POST /v1/jobs
    job_batch_id: str
    chat_job_id: str  # POST /v1/chat/completions (x-routeq-job-id)
    batch_id: str  # POST /v1/batches
    input_file_id: str
    output_file_id: str
    error_file_id: str

    async def key(self, tenant: str, *, admin: bool = False, operator: bool = False) -> str:
        secret = await self.api.key(tenant, admin=admin, operator=operator)
        self.secrets.append(secret)
        return secret

    def client(self, secret: str | None) -> httpx2.AsyncClient:
        return client_for(self.api, secret)


def client_for(api: LiveApi, secret: str | None) -> httpx2.AsyncClient:
    """An HTTP client of the API sending `secret` as its key (none if None)."""
    headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
    return httpx2.AsyncClient(base_url=api.url, headers=headers, timeout=WAIT_S)


async def read_events(client: httpx2.AsyncClient, path: str) -> list[httpx2.ServerSentEvent]:
    """Every event of an SSE route, which must answer 200 and end by itself."""
    async with asyncio.timeout(WAIT_S), client.sse(path) as source:
        assert source.response.status_code == 200, path
        return [event async for event in source]


async def settled(client: httpx2.AsyncClient, batch_id: str) -> dict[str, Any]:
    """The batch once terminal. `batch.completed` is published just before the batch row is marked
    complete, so right after the event the batch may still read `finalizing` for a moment."""
    async with asyncio.timeout(WAIT_S):
        while True:
            batch: dict[str, Any] = (await client.get(f"/v1/batches/{batch_id}")).raise_for_status().json()
            if batch["status"] in TERMINAL:
                return batch
            await asyncio.sleep(0.01)


async def make_acme(api: LiveApi, acme: httpx2.AsyncClient, acme_secret: str) -> dict[str, str]:
    """Acme's job, chat completion, file and batch, each waited for through its event stream."""
    created = await acme.post("/v1/jobs", json={"prompt": "Say hi", "custom_id": "solo"})
    assert created.status_code == 202, created.text
    job = created.json()
    sdk = api.openai(acme_secret)
    chat = await sdk.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Say hello"}], max_tokens=40
    )
    uploaded = await sdk.files.create(file=("prompts.jsonl", INPUT), purpose="batch")
    openai_batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await read_events(acme, f"/v1/jobs/{job['id']}/events")
    await read_events(acme, f"/v1/batches/{openai_batch.id}/events")
    batch = await settled(acme, openai_batch.id)
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    return {
        "job_id": job["id"],
        "job_batch_id": job["batch_id"],
        "chat_job_id": chat.headers["x-routeq-job-id"],
        "batch_id": openai_batch.id,
        "input_file_id": uploaded.id,
        "output_file_id": batch["output_file_id"],
        "error_file_id": batch["error_file_id"],
    }


@pytest.fixture
async def world(backend: Backend, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Acme]:
    caplog.set_level(logging.DEBUG)  # from the first request on: see test_secrets_are_never_stored_or_logged
    async with serve_api(backend, api_wait_timeout_s=WAIT_S) as api:
        acme_secret, globex_secret = await api.key("acme"), await api.key("globex")
        async with client_for(api, acme_secret) as acme, client_for(api, globex_secret) as globex:
            ids = await make_acme(api, acme, acme_secret)
            yield Acme(api, acme, globex, [acme_secret, globex_secret], **ids)


@dataclass(frozen=True)
class Route:
    """A route taking one id; `{id}` in the path, or the body's `input_file_id`."""

    method: str
    path: str
    id: str
    body: bool = False  # POST /v1/batches: the id is the body's input_file_id

    async def send(self, client: httpx2.AsyncClient, id_: str | None = None) -> httpx2.Response:
        id_ = id_ or self.id
        if self.body:
            batch = {"input_file_id": id_, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
            return await client.request(self.method, self.path, json=batch)
        return await client.request(self.method, self.path.replace("{id}", id_))

    @property
    def streams(self) -> bool:
        return self.path.endswith("/events")


def id_routes(w: Acme) -> list[Route]:
    return [
        Route("GET", "/v1/jobs/{id}", w.job_id),
        Route("GET", "/v1/jobs/{id}", w.chat_job_id),
        Route("GET", "/v1/jobs/{id}/events", w.job_id),
        Route("GET", "/v1/jobs/{id}/events", w.chat_job_id),
        Route("GET", "/v1/batches/{id}", w.batch_id),
        Route("GET", "/v1/batches/{id}", w.job_batch_id),
        Route("GET", "/v1/batches/{id}/jobs", w.batch_id),
        Route("GET", "/v1/batches/{id}/events", w.batch_id),
        Route("GET", "/v1/batches?after={id}", w.batch_id),
        Route("POST", "/v1/batches/{id}/cancel", w.batch_id),
        Route("GET", "/v1/files/{id}", w.input_file_id),
        Route("GET", "/v1/files/{id}/content", w.input_file_id),
        Route("GET", "/v1/files/{id}", w.output_file_id),
        Route("GET", "/v1/files/{id}/content", w.output_file_id),
        Route("GET", "/v1/files/{id}", w.error_file_id),
        Route("GET", "/v1/files/{id}/content", w.error_file_id),
        Route("POST", "/v1/batches", w.input_file_id, body=True),
    ]


def error_of(response: httpx2.Response, status: int) -> dict[str, Any]:
    """The OpenAI-shaped error body of a `status` answer."""
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


async def test_another_tenants_ids_are_404_like_ids_that_never_existed(world: Acme) -> None:
    for route in id_routes(world):
        async with asyncio.timeout(WAIT_S):  # an event stream answering 200 would never end
            foreign = await route.send(world.globex)
            prefix = route.id.split("_", 1)[0]
            unknown = await route.send(world.globex, f"{prefix}_nothing_here")
        assert error_of(foreign, 404)["type"] == "not_found_error"
        assert foreign.text == unknown.text.replace(f"{prefix}_nothing_here", route.id), route


async def test_the_owner_reads_every_route(world: Acme) -> None:
    for route in id_routes(world):
        if route.streams:
            continue  # read below: a 200 event stream
        response = await route.send(world.acme)
        assert response.status_code == 200, (route, response.text)
    acme = world.acme
    job = (await acme.get(f"/v1/jobs/{world.job_id}")).json()
    assert (job["status"], job["custom_id"]) == ("succeeded", "solo")
    assert job["attempts"]
    assert (await acme.get(f"/v1/files/{world.input_file_id}/content")).content == INPUT
    output = (await acme.get(f"/v1/files/{world.output_file_id}/content")).text.splitlines()
    assert sorted(json.loads(row)["custom_id"] for row in output) == ["q-0", "q-1"]
    errors = (await acme.get(f"/v1/files/{world.error_file_id}/content")).text.splitlines()
    assert [json.loads(row)["custom_id"] for row in errors] == ["broken"]
    jobs = (await acme.get(f"/v1/batches/{world.batch_id}/jobs")).json()
    assert [row["custom_id"] for row in jobs["data"]] == ["q-0", "q-1"]
    cancelled = (await acme.post(f"/v1/batches/{world.batch_id}/cancel")).json()
    assert cancelled["status"] == "completed"  # nothing was left to cancel
    # The second batch acme made from its file above (POST /v1/batches) runs to the end, too.
    second = (await acme.get("/v1/batches", params={"limit": 1})).json()["data"][0]
    assert second["id"] != world.batch_id
    assert second["input_file_id"] == world.input_file_id
    await read_events(acme, f"/v1/batches/{second['id']}/events")
    assert (await settled(acme, second["id"]))["status"] == "completed"


async def test_the_owners_event_streams_replay_and_end(world: Acme) -> None:
    for job_id in (world.job_id, world.chat_job_id):
        events = await read_events(world.acme, f"/v1/jobs/{job_id}/events")
        assert [e.event for e in events] == ["job.succeeded"]  # the job's own event, then the end
        assert json.loads(events[0].data)["job_id"] == job_id
    events = await read_events(world.acme, f"/v1/batches/{world.batch_id}/events")
    kinds = [e.event for e in events]
    assert kinds.count("job.succeeded") == 2
    assert kinds[-1] == "batch.completed"
    assert events[-1].json() == {"total": 2, "done": 2, "succeeded": 2, "failed": 0, "cancelled": 0}
    resumed = await read_events(world.acme, f"/v1/batches/{world.batch_id}/events?after={events[-2].id}")
    assert [e.event for e in resumed] == ["batch.completed"]


async def test_events_past_the_streams_retention_come_from_sql(world: Acme) -> None:
    """A stream gone (retention, a flushed Redis): a finished job or batch still gets its end."""
    await settled(world.acme, world.batch_id)
    redis = await world.api.backend.redis()
    await redis.delete(keys.batch_events(world.batch_id), keys.batch_events(world.job_batch_id))
    job = await read_events(world.acme, f"/v1/jobs/{world.job_id}/events")
    assert [e.event for e in job] == ["job.succeeded"]
    assert json.loads(job[0].data)["job_id"] == world.job_id
    batch = await read_events(world.acme, f"/v1/batches/{world.batch_id}/events")
    assert [e.event for e in batch] == ["batch.completed"]
    assert batch[0].json() == {"total": 2, "done": 2, "succeeded": 2, "failed": 0, "cancelled": 0}


async def test_lists_and_analytics_are_per_tenant(world: Acme) -> None:
    acme_ids = {world.job_id, world.chat_job_id, world.job_batch_id, world.batch_id}
    acme_ids |= {world.input_file_id, world.output_file_id, world.error_file_id}
    for path in ("/v1/batches", "/v1/files", "/v1/files?purpose=batch"):
        theirs = (await world.globex.get(path)).raise_for_status().json()
        assert theirs["data"] == [], path
        assert not any(id_ in json.dumps(theirs) for id_ in acme_ids)
    ours = (await world.acme.get("/v1/batches")).json()
    assert world.batch_id in {b["id"] for b in ours["data"]}
    files = (await world.acme.get("/v1/files")).json()
    assert world.input_file_id in {f["id"] for f in files["data"]}

    theirs = (await world.globex.get("/v1/analytics")).raise_for_status().json()
    assert theirs["totals"]["requests"] == 0
    assert theirs["totals"]["provider_calls"] == 0
    assert (theirs["deployments"], theirs["daily"]) == ([], [])
    ours = (await world.acme.get("/v1/analytics")).json()
    assert ours["totals"]["requests"] == 4  # the job, the chat completion, the batch's two lines
    assert ours["totals"]["successes"] == 4
    assert ours["deployments"]
    error = error_of(await world.globex.get("/v1/analytics", params={"all_tenants": "true"}), 403)
    assert error["type"] == "permission_error"


async def test_keys_are_checked(world: Acme) -> None:
    routes = ["/v1/batches", "/v1/files", f"/v1/jobs/{world.job_id}", "/v1/providers", "/v1/analytics"]
    revoked_key, revoked = await world.api.backend.store.api_keys.create(tenant="acme", user_id="u1")
    world.secrets.append(revoked)
    async with world.client(None) as anonymous, world.client(revoked) as former:
        assert (await former.get("/v1/batches")).status_code == 200
        await world.api.backend.store.api_keys.revoke(revoked_key.id)
        for path in routes:
            missing = error_of(await anonymous.get(path), 401)
            assert (missing["type"], missing["code"]) == ("authentication_error", "missing_api_key")
            assert (await anonymous.get(path)).headers["www-authenticate"] == "Bearer"
            assert error_of(await former.get(path), 401)["code"] == "invalid_api_key"
        chat = await anonymous.post("/v1/chat/completions", json={"model": "auto", "messages": []})
        assert error_of(chat, 401)["code"] == "missing_api_key"  # before the body is looked at
    async with world.client("rq-" + "x" * 43) as unknown:
        assert error_of(await unknown.get("/v1/batches"), 401)["code"] == "invalid_api_key"


async def test_fleet_routes_need_an_operator_key_not_a_tenants_admin_key(world: Acme) -> None:
    route = "/v1/admin/deployments/cheap-a/state"
    error = error_of(await world.acme.post(route, json={"state": "down"}), 403)
    assert (error["type"], error["code"]) == ("permission_error", "not_operator")
    # A tenant's admin key administers its tenant: it neither reads nor changes the whole fleet.
    async with world.client(await world.key("globex", admin=True)) as tenant_admin:
        everyone = await tenant_admin.get("/v1/analytics", params={"all_tenants": "true"})
        assert error_of(everyone, 403)["code"] == "not_operator"
        assert error_of(await tenant_admin.post(route, json={"state": "down"}), 403)["code"] == "not_operator"
        own = (await tenant_admin.get("/v1/analytics")).raise_for_status().json()
        assert own["totals"]["requests"] == 0  # globex's own numbers, not acme's
    async with world.client(await world.key("ops", operator=True)) as admin:
        assert error_of(await admin.post("/v1/admin/deployments/nope/state", json={"state": "down"}), 404)
        forced = await admin.post(route, json={"state": "down"})
        assert forced.status_code == 200, forced.text
        assert forced.json()["forced"] == "down"
        providers = (await world.globex.get("/v1/providers")).json()["data"]
        assert {p["id"]: p["forced"] for p in providers} == {
            "cheap-a": "down",
            "fast-b": None,
            "smart-c": None,
        }
        restored = await admin.post(route, json={"state": "auto"})
        assert restored.status_code == 200, restored.text
        providers = (await world.globex.get("/v1/providers")).json()["data"]
        assert all(p["forced"] is None for p in providers)
        everyone = (await admin.get("/v1/analytics", params={"all_tenants": "true"})).json()
        assert everyone["totals"]["requests"] == 4


async def sql_dump(backend: Backend) -> dict[str, list[str]]:
    """Every row of every table, each value as text (bytes decoded)."""
    dump: dict[str, list[str]] = {}
    async with backend.store.reading() as conn:
        for table in metadata.sorted_tables:
            rows = (await conn.execute(select(table))).all()
            dump[table.name] = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for row in rows for v in row
            ]
    return dump


async def redis_dump(redis: Redis) -> list[bytes]:
    """Every key and value in Redis, as raw bytes (arq's payloads are pickles)."""
    values: list[bytes] = []
    async for key in redis.scan_iter(count=1000):
        values.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            values.append(await redis.get(key) or b"")
        elif kind == "hash":
            values.extend([b"%s=%s" % pair async for pair in redis.hscan_iter(key)])
        elif kind == "zset":
            values.extend([member async for member, _ in redis.zscan_iter(key)])
        elif kind == "set":
            values.extend([member async for member in redis.sscan_iter(key)])
        else:
            assert kind == "stream", f"{key!r} is a {kind}: dump it too"
            values.extend(repr(entry).encode() for entry in await redis.xrange(key))
    return values


async def test_secrets_are_never_stored_or_logged(world: Acme, caplog: pytest.LogCaptureFixture) -> None:
    admin = await world.key("globex", operator=True)
    async with world.client(admin) as client:
        assert (await client.get("/v1/analytics", params={"all_tenants": "true"})).status_code == 200
        wrong = admin[:-1] + ("A" if admin[-1] != "A" else "B")  # a near miss: still 401, not logged
        assert (
            await client.get("/v1/batches", headers={"Authorization": f"Bearer {wrong}"})
        ).status_code == 401
    world.secrets.append(wrong)

    tables = await sql_dump(world.api.backend)
    assert len(world.secrets) == 4
    for secret in world.secrets:
        for name, values in tables.items():
            assert not any(secret in value for value in values), f"a key's secret is stored in {name}"
    stored = {hash_secret(secret) for secret in world.secrets[:-1]}
    assert stored <= set(tables["api_keys"]), "each key is stored as its SHA-256"
    assert tables["jobs"], "the dump covers the rows the requests made"

    stored_in_redis = b"\n".join(await redis_dump(await world.api.backend.redis()))
    assert world.job_id.encode() in stored_in_redis
    assert not any(secret.encode() in stored_in_redis for secret in world.secrets)

    records = caplog.get_records("setup") + caplog.records
    assert records, "logging was captured"
    formatter = logging.Formatter()
    for record in records:
        text = formatter.format(record)
        assert not any(secret in text for secret in world.secrets), f"a secret logged by {record.name}"


async def test_ready_says_only_reachable_or_unreachable(backend: Backend) -> None:
    """/ready takes no key (load balancers call it), so it shows no URL, host or error text."""
    async with serve_api(backend, worker=False) as api, httpx2.AsyncClient(base_url=api.url) as anonymous:
        ready = await anonymous.get("/ready")
        assert (ready.status_code, ready.json()) == (
            200,
            {"status": "ready", "redis": "reachable", "database": "reachable"},
        )
