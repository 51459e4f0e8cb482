"""The OpenAI Batch API, driven by the official openai SDK: files, batches, statuses, results, cancel."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
import pytest
from openai.types import Batch

from producer.api import batches as batches_api
from producer.client import Client
from producer.inputs import InputRules, ParsedInput, parse_lines
from router_core.models import ChatRequest
from storage.jobs import ApiBatch, NewJob
from tests.api_harness import serve_api
from tests.backends import Backend
from tests.conftest import TRIO, make_catalog

URL = "/v1/chat/completions"


def line(custom_id: str, text: str, **body: Any) -> str:
    request = {"messages": [{"role": "user", "content": text}], "model": "auto", **body}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}
    )


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


async def finished(client: openai.AsyncOpenAI, batch_id: str) -> Batch:
    """The batch once it reaches a terminal status (bounded wait)."""
    async with asyncio.timeout(30):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in {"completed", "failed", "cancelled", "expired"}:
                return batch
            await asyncio.sleep(0.02)


async def results(client: openai.AsyncOpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    assert file_id is not None
    content = await client.files.content(file_id)
    return {row["custom_id"]: row for row in map(json.loads, content.text.splitlines())}


async def test_batch_lifecycle_through_the_sdk(backend: Backend) -> None:
    async with serve_api(backend) as api:
        client = api.openai(await api.key("acme"))
        lines = [line(f"q-{i}", f"Question number {i}?", max_tokens=40) for i in range(12)]
        lines.insert(
            5, '{"custom_id": "broken", "method": "POST", "url": "/v1/chat/completions", "body": {}}'
        )
        lines.append(line("cheap-one", "Pick the cheapest", model="router:cost"))
        uploaded = await client.files.create(file=("prompts.jsonl", jsonl(lines)), purpose="batch")
        assert uploaded.purpose == "batch"
        assert uploaded.bytes == len(jsonl(lines))
        assert (await client.files.retrieve(uploaded.id)).filename == "prompts.jsonl"
        assert (await client.files.content(uploaded.id)).content == jsonl(lines)

        created = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"team": "search"},
        )
        assert created.status in {"in_progress", "finalizing", "completed"}
        assert created.request_counts is not None
        assert created.request_counts.total == 14
        assert created.errors is not None
        assert created.errors.data is not None
        assert created.errors.data[0].line == 6
        assert "body.messages is required" in str(created.errors.data[0].message)

        batch = await finished(client, created.id)
        assert batch.status == "completed"
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (13, 1)
        assert batch.metadata == {"team": "search"}
        assert batch.completed_at is not None
        assert batch.output_file_id
        assert batch.error_file_id

        output = await results(client, batch.output_file_id)
        assert set(output) == {f"q-{i}" for i in range(12)} | {"cheap-one"}
        answer = output["cheap-one"]
        assert answer["response"]["status_code"] == 200
        assert answer["response"]["body"]["choices"][0]["message"]["content"]
        assert answer["routeq"]["deployment"] == "cheap-a"  # routed across providers, by cost here
        errors = await results(client, batch.error_file_id)
        assert list(errors) == ["broken"]
        assert errors["broken"]["error"]["message"].startswith("line 6:")

        listed = await client.batches.list(limit=10)
        assert [b.id for b in listed.data] == [batch.id]


async def test_cancel_keeps_partial_results(backend: Backend) -> None:
    async with serve_api(backend, worker=False) as api:
        client = api.openai(await api.key("acme"))
        uploaded = await client.files.create(
            file=("p.jsonl", jsonl([line(f"q-{i}", f"Question {i}") for i in range(20)])), purpose="batch"
        )
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert created.status == "in_progress"
        done = await backend.run_worker(max_burst_jobs=5, max_jobs=1)  # a few lines finish, the rest wait
        assert 0 < done < 20
        cancelled = await client.batches.cancel(created.id)
        assert cancelled.status == "cancelled"
        assert cancelled.request_counts is not None
        assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (done, 20 - done)
        output = await results(client, cancelled.output_file_id)
        assert len(output) == done
        assert all(row["response"]["status_code"] == 200 for row in output.values())
        errors = await results(client, cancelled.error_file_id)
        assert len(errors) == 20 - done
        assert {row["error"]["code"] for row in errors.values()} == {"Cancelled"}


async def test_batch_errors_name_the_field(backend: Backend) -> None:
    async with serve_api(backend, worker=False, api_max_upload_bytes=2048) as api:
        client = api.openai(await api.key("acme"))
        with pytest.raises(openai.BadRequestError, match="purpose"):
            await client.files.create(file=("p.jsonl", b"{}\n"), purpose="fine-tune")
        with pytest.raises(openai.APIStatusError) as too_big:
            # Refused from its Content-Length, before the body is read (small enough to be sent whole).
            await client.files.create(file=("big.jsonl", b"x" * 40_000), purpose="batch")
        assert too_big.value.status_code == 413
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            await client.batches.create(
                input_file_id="file-nope",
                endpoint="/v1/embeddings",
                completion_window="24h",
            )
        bad = await client.files.create(file=("bad.jsonl", b"not json\n"), purpose="batch")
        failed = await client.batches.create(
            input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert failed.status == "failed"
        assert failed.failed_at is not None
        assert failed.errors is not None
        assert failed.errors.data
        assert failed.errors.data[0].line == 1


async def test_a_batch_past_its_window_expires(backend: Backend) -> None:
    async with serve_api(backend, worker=False) as api:
        client = api.openai(await api.key("acme"))
        producer = Client(await backend.redis(), backend.store, backend.settings, tenant="acme", user="u1")
        window_ended = ApiBatch(
            endpoint=URL, input_file_id="file-x", completion_window="24h", expires_at=datetime.now(UTC)
        )
        hello = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
        items = [NewJob(f"q-{i}", hello) for i in range(4)]
        batch_id = await producer.submit_batch(items, api=window_ended)
        await backend.run_worker()
        batch = await client.batches.retrieve(batch_id)
        assert batch.status == "expired"
        assert batch.expired_at is not None
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 4)
        errors = await results(client, batch.error_file_id)
        assert {row["error"]["code"] for row in errors.values()} == {"batch_expired"}


async def test_text_no_database_stores_is_refused_by_field(backend: Backend) -> None:
    """NUL and lone surrogates pass JSON but not PostgreSQL: a 400 or a bad line, never a 5xx."""
    async with serve_api(backend) as api:
        client = api.openai(await api.key("acme"))
        headers = {"Authorization": f"Bearer {await api.key('acme')}", "content-type": "application/json"}
        async with httpx2.AsyncClient(base_url=api.url, headers=headers) as http:
            job = await http.post("/v1/jobs", content=b'{"prompt": "hi", "custom_id": "a\\u0000b"}')
            assert job.status_code == 400
            assert job.json()["error"]["message"].startswith("custom_id: contains a NUL character")
            chat = b'{"model": "auto", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
            refused = await http.post("/v1/chat/completions", content=chat)
            assert refused.status_code == 400
            assert refused.json()["error"]["param"] == "messages.0.content"
            message = (
                b'{"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "a\\u0000b"}]}'
            )
            refused = await http.post("/v1/messages", content=message)  # the Anthropic route, the same check
            assert refused.status_code == 400, refused.text
            assert "NUL" in refused.json()["error"]["message"]
        lines = [line("good", "Hello"), line("nul", "Hello\u0000there"), line("\ud800", "Hi")]
        uploaded = await client.files.create(file=("t.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await finished(client, batch.id)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
        errors = await results(client, done.error_file_id)
        assert set(errors) == {"nul", None}  # a custom_id that is not text is not echoed back


async def test_a_large_upload_is_parsed_off_the_event_loop(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a batch file is being parsed, other requests are answered (the parse waits for one)."""
    parsing, health_answered = threading.Event(), threading.Event()
    order: list[str] = []

    def gated_parse(lines: list[str], rules: InputRules) -> ParsedInput:
        parsing.set()
        # On the event loop this wait would block the very request it waits for: bounded, so a
        # regression fails on the order below instead of hanging.
        health_answered.wait(timeout=5)
        order.append("parsed")
        return parse_lines(lines, rules)

    monkeypatch.setattr(batches_api, "parse_lines", gated_parse)
    async with serve_api(backend, worker=False) as api:
        client = api.openai(await api.key("acme"))
        lines = [line(f"q-{i}", f"Question number {i}?") for i in range(2_000)]
        uploaded = await client.files.create(file=("big.jsonl", jsonl(lines)), purpose="batch")
        creating = asyncio.create_task(
            client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        )
        await asyncio.to_thread(parsing.wait, 10)
        async with httpx2.AsyncClient(base_url=api.url) as http:
            assert (await http.get("/health")).status_code == 200
        order.append("health")
        health_answered.set()
        created = await creating
        assert order == ["health", "parsed"]
        assert created.request_counts is not None
        assert created.request_counts.total == 2_000
        await client.batches.cancel(created.id)


async def test_a_batchs_jobs_filtered_by_metadata_and_lines_with_every_field(backend: Backend) -> None:
    without_n = make_catalog([{**d, "features": ["tools", "seed"]} for d in TRIO])  # n as n calls
    async with serve_api(backend, catalog=without_n) as api:
        secret = await api.key("acme")
        client = api.openai(secret)
        teams = ["search", "ads", "search", "ads=x"]
        lines = [
            line(
                f"q-{i}", f"Question {i}?", metadata={"team": team, "n": str(i)}, user=f"end-{i % 2}", seed=i
            )
            for i, team in enumerate(teams)
        ]
        lines.append(
            line("tools", "Weather?", n=2, tools=[{"type": "function", "function": {"name": "weather"}}])
        )
        uploaded = await client.files.create(file=("m.jsonl", jsonl(lines)), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert created.errors is None
        batch = await finished(client, created.id)
        output = await results(client, batch.output_file_id)
        assert output["q-1"]["routeq"]["user"] == "end-1"
        assert output["q-1"]["routeq"]["metadata"] == {"team": "ads", "n": "1"}
        assert len(output["tools"]["response"]["body"]["choices"]) == 2
        assert output["tools"]["routeq"]["metadata"] is None

        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx2.AsyncClient(base_url=api.url, headers=headers) as http:

            async def custom_ids(*filters: str, **params: Any) -> list[str]:
                query = [("metadata", f) for f in filters] + list(params.items())
                page = await http.get(f"/v1/batches/{batch.id}/jobs", params=query)
                assert page.status_code == 200, page.text
                return [job["custom_id"] for job in page.json()["data"]]

            assert await custom_ids("team=search") == ["q-0", "q-2"]
            assert await custom_ids("team=search", "n=2") == ["q-2"]
            assert await custom_ids("team=ads=x") == ["q-3"]  # split at the first '='
            assert await custom_ids("team=search", limit=1) == ["q-0"]
            assert await custom_ids("team=nobody") == []
            assert len(await custom_ids()) == 5
            page = (await http.get(f"/v1/batches/{batch.id}/jobs", params={"metadata": "n=1"})).json()
            assert (page["data"][0]["user"], page["data"][0]["metadata"]) == (
                "end-1",
                {"team": "ads", "n": "1"},
            )
            for bad, message in [
                (["team"], "metadata: 'team' is not <key>=<value>"),
                (["team=a", "team=b"], "metadata: key 'team' is given twice"),
                (["team=a\u0000"], "metadata.team: contains a NUL character"),
            ]:
                refused = await http.get(
                    f"/v1/batches/{batch.id}/jobs", params=[("metadata", b) for b in bad]
                )
                assert refused.status_code == 400
                assert refused.json()["error"]["param"] == "metadata"
                assert refused.json()["error"]["message"].startswith(message)
