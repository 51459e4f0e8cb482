"""Every door a request comes in by refuses what the pipeline cannot run or store, naming the field:
the HTTP API (400), the Batch API and `routeq run` (that line only), the Python client (an error).

Run on SQLite and on PostgreSQL, where a non-finite number in a stored request fails the whole
transaction: that used to lose a batch's good lines with the bad one, or answer 503 as an outage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from typer.testing import CliRunner

from producer.api.errors import install_error_handlers
from producer.cli import app
from producer.client import Client
from router_core.errors import InvalidRequestError
from router_core.models import ChatRequest
from storage.jobs import NewJob
from tests.api_harness import serve_api
from tests.backends import Backend
from tests.test_api_batches import finished, jsonl, line, results
from tests.test_cli_pipeline import workdir

__all__ = ["workdir"]  # the CLI fixture, shared

HELLO = [{"role": "user", "content": "hi"}]


def _error(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_the_api_refuses_non_finite_and_oversize_requests_by_field(backend: Backend) -> None:
    async with serve_api(backend, worker=False, max_prompt_bytes=1000, max_messages=5) as api:
        headers = {
            "Authorization": f"Bearer {await api.key('entry-checks')}",
            "content-type": "application/json",
        }
        async with httpx2.AsyncClient(base_url=api.url, headers=headers) as http:
            for body in (
                b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], '
                b'"preferences": {"timeout_ms": 1e999}}',
                b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], '
                b'"preferences": {"timeout_ms": Infinity}}',
            ):
                error = _error(await http.post("/v1/chat/completions", content=body))
                assert error["param"] == "preferences.timeout_ms", error
                assert "finite number" in error["message"]
            error = _error(await http.post("/v1/jobs", content=b'{"prompt": "hi", "temperature": NaN}'))
            assert error["param"] == "temperature"
            job = b'{"prompt": "hi", "preferences": {"max_latency_ms": 1e999}}'
            assert _error(await http.post("/v1/jobs", content=job))["param"] == "preferences.max_latency_ms"

            long_chat = {"model": "auto", "messages": [{"role": "user", "content": "x" * 1001}]}
            error = _error(await http.post("/v1/chat/completions", json=long_chat))
            assert error["param"] == "messages"
            assert "ROUTEQ_MAX_PROMPT_BYTES" in error["message"]
            error = _error(await http.post("/v1/jobs", json={"prompt": "x" * 1001}))
            assert error["param"] == "prompt"
            error = _error(await http.post("/v1/jobs", json={"messages": HELLO * 6}))
            assert (error["param"], "ROUTEQ_MAX_MESSAGES" in error["message"]) == ("messages", True)
            error = _error(await http.post("/v1/jobs", json={"prompt": "hi", "model": "gpt-nope"}))
            assert error["param"] == "model"
        assert await backend.store.batches.list(tenant="entry-checks") == []  # nothing was stored


async def test_batch_api_lines_fail_alone(backend: Backend) -> None:
    async with serve_api(backend, max_prompt_bytes=1000, max_line_bytes=4000) as api:
        client = api.openai(await api.key("acme"))
        lines = [
            line("good", "Hello"),
            line("inf", "Hello", preferences={"timeout_ms": 1e308}).replace("1e+308", "1e999"),
            line("long", "x" * 1001),
            line("huge", "y" * 5000),
            line("nope", "Hello", model="gpt-nope"),
            line("chain", "Hello", preferences={"strategy": "fallback_chain", "chain": ["nowhere"]}),
        ]
        uploaded = await client.files.create(file=("t.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await finished(client, batch.id)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 5)
        assert done.errors is not None
        assert done.errors.data is not None
        reasons = {e.line: str(e.message) for e in done.errors.data}
        assert reasons[2].startswith("body.preferences.timeout_ms: not a finite number"), reasons
        assert reasons[3].startswith("body.messages: the messages' text is 1001 bytes"), reasons
        assert "ROUTEQ_MAX_LINE_BYTES" in reasons[4], reasons
        assert reasons[5].startswith("body.model: 'gpt-nope'"), reasons
        assert reasons[6].startswith("body.preferences.chain: unknown deployment ids ['nowhere']"), reasons
        assert set(await results(client, done.output_file_id)) == {"good"}


async def test_the_client_refuses_what_the_database_would(backend: Backend) -> None:
    settings = backend.settings.model_copy(update={"max_messages": 2, "tenant": "entry-checks"})
    client = Client(await backend.redis(), backend.store, settings)
    hello = ChatRequest.model_validate({"messages": HELLO})
    with pytest.raises(InvalidRequestError, match=r"^budget_usd: must be a finite number"):
        await client.submit_batch([NewJob("a", hello)], budget_usd=float("inf"))
    with pytest.raises(InvalidRequestError, match=r"^items\[1\]\.custom_id: contains a NUL"):
        await client.submit_batch([NewJob("a", hello), NewJob("b\x00", hello)])
    with pytest.raises(InvalidRequestError, match=r"^items\[0\]\.request\.messages: 3 messages"):
        await client.submit_batch([NewJob("a", ChatRequest.model_validate({"messages": HELLO * 3}))])
    with pytest.raises(InvalidRequestError, match=r"^name: contains a NUL"):
        await client.submit_batch([NewJob("a", hello)], name="x\x00")
    assert await backend.store.batches.list(tenant="entry-checks") == []
    assert await client.submit_batch([NewJob("a", hello)])  # and a good batch still goes in


class _PgError(Exception):
    sqlstate = "22021"


def test_a_data_error_is_400_not_an_outage() -> None:
    """The backstop: a value the checks missed and the database refused is the request's fault."""
    api = FastAPI()
    install_error_handlers(api)

    @api.get("/data")
    async def data() -> None:
        raise DataError("INSERT ...", {}, Exception('invalid input syntax for type json\nDETAIL: "Infinity"'))

    @api.get("/pg")
    async def pg() -> None:
        # asyncpg's errors reach SQLAlchemy as a plain DBAPIError: the SQLSTATE says it is the data.
        raise DBAPIError("INSERT ...", {}, _PgError("invalid byte sequence for encoding UTF8: 0x00"))

    @api.get("/down")
    async def down() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    with TestClient(api) as http:
        refused = http.get("/data")
        assert refused.status_code == 400
        assert refused.json()["error"]["message"].startswith(
            "the database refused this request's data (invalid input syntax for type json)"
        )
        assert http.get("/pg").status_code == 400
        assert http.get("/down").status_code == 503


@pytest.mark.usefixtures("workdir")
def test_routeq_run_lists_bad_lines_by_field_and_runs_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"custom_id": "good", "prompt": "Hello"}),
        '{"custom_id": "inf", "prompt": "Hello", "preferences": {"timeout_ms": 1e999}}',
        json.dumps({"custom_id": "nope", "prompt": "Hello", "model": "gpt-nope"}),
        json.dumps(
            {
                "custom_id": "chain",
                "prompt": "Hello",
                "preferences": {"strategy": "fallback_chain", "chain": ["x"]},
            }
        ),
        json.dumps({"custom_id": "router", "prompt": "Hello", "model": "router:cost"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["run", str(path), "-o", "out.jsonl"])
    assert result.exit_code == 0, result.output
    assert re.search(r"in\.jsonl:2: .*preferences\.timeout_ms: not a finite number", result.output), (
        result.output
    )
    assert re.search(r"in\.jsonl:3: .*model: 'gpt-nope' is neither", result.output), result.output
    assert re.search(r"in\.jsonl:4: .*preferences\.chain: unknown deployment ids \['x'\]", result.output)
    assert "3 of 5 lines rejected" in result.output
    out = [json.loads(row) for row in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {row["custom_id"] for row in out if row["error"] is None} == {"good", "router"}
