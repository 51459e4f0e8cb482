"""A batch file mixing the whole Chat Completions language, on the demo catalog's real models.

`examples/chat-features.jsonl` holds tool calls (auto and forced), a tool-result turn, json_schema
and json_object formats, images by URL and data URL, logprobs, n=3, sampling parameters, reasoning
effort, user + metadata, a service tier, logit_bias, and three lines that cannot run, each for a
named reason. The same file goes through `routeq run` and through the Batch API with the openai SDK
as the client: every line succeeds, or fails naming its line and field.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from producer.cli import app
from router_core.catalog import Catalog, parse_catalog
from router_core.chat import Feature
from tests.api_harness import serve_api
from tests.backends import Backend
from tests.test_api_batches import finished, results
from tests.test_cli_pipeline import workdir  # noqa: F401  # the fixture

EXAMPLE = Path(__file__).parent.parent / "examples" / "chat-features.jsonl"
DEMO_TEXT = (Path(__file__).parent.parent / "router_core" / "demo_catalog.toml").read_text()
# The demo catalog as it is, but with instant, faultless simulated providers: this test is about
# what each line asks for, not about retries.
FAST_DEMO = re.sub(r"^sim = \{.*\}$", "sim = { latency_ms = 0 }", DEMO_TEXT, flags=re.M)
LINES = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
BODIES = {line["custom_id"]: line["body"] for line in LINES}
REFUSED = {
    "pinned-cannot": "line 15: body.logprobs: model 'claude-haiku-4-5' cannot honour it",
    "text-only-image": "line 16: body.messages: model 'llama-3.3-70b' cannot honour its image_url parts",
    "unknown-tool": "line 17: body.tool_choice: names 'get_time', which is not in tools",
}


def fast_demo() -> Catalog:
    return parse_catalog(tomllib.loads(FAST_DEMO), source="<fast demo>")


def tool_schema(custom_id: str, name: str) -> dict[str, Any]:
    tools: dict[str, dict[str, Any]] = {
        t["function"]["name"]: t["function"]["parameters"] for t in BODIES[custom_id]["tools"]
    }
    return tools[name]


def check_answers(output: dict[str, dict[str, Any]], catalog: Catalog) -> None:
    """Each succeeded line's answer is what its request asked for, from a deployment that can."""
    bodies = {cid: row["response"]["body"] for cid, row in output.items()}
    routed = {cid: row["routeq"]["deployment"] for cid, row in output.items()}
    assert set(bodies) == set(BODIES) - set(REFUSED)
    for cid, row in output.items():
        assert row["response"]["status_code"] == 200, (cid, row["error"])
        assert row["routeq"]["status"] == "succeeded"

    for cid, forced in (("tool-call", None), ("forced-tool", "search_flights")):
        choice = bodies[cid]["choices"][0]
        assert choice["finish_reason"] == "tool_calls", cid
        [call] = choice["message"]["tool_calls"]
        assert forced is None or call["function"]["name"] == forced
        jsonschema.validate(
            json.loads(call["function"]["arguments"]), tool_schema(cid, call["function"]["name"])
        )
    assert bodies["tool-result"]["choices"][0]["finish_reason"] == "stop"
    assert bodies["tool-result"]["choices"][0]["message"]["content"]

    schema = BODIES["json-schema"]["response_format"]["json_schema"]["schema"]
    jsonschema.validate(json.loads(bodies["json-schema"]["choices"][0]["message"]["content"]), schema)
    assert isinstance(json.loads(bodies["json-object"]["choices"][0]["message"]["content"]), dict)

    for cid in ("image-url", "image-data"):
        assert Feature.VISION in catalog[routed[cid]].features, cid
    logprobs = bodies["logprobs"]["choices"][0]["logprobs"]["content"]
    assert logprobs
    assert all(len(entry["top_logprobs"]) == 3 for entry in logprobs)
    assert [c["index"] for c in bodies["three-choices"]["choices"]] == [0, 1, 2]
    assert Feature.TEMPERATURE in catalog[routed["sampling"]].features
    assert Feature.REASONING in catalog[routed["reasoning"]].features
    assert catalog[routed["service-tier"]].provider == "openai"
    assert routed["logit-bias"] == "gpt-4o-mini"
    meta = output["user-metadata"]["routeq"]
    assert (meta["user"], meta["metadata"]) == ("analyst-42", {"team": "research", "ticket": "RQ-7"})


def test_the_mixed_file_through_routeq_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    catalog_path = workdir / "demo.toml"
    catalog_path.write_text(FAST_DEMO)
    monkeypatch.setenv("ROUTEQ_CATALOG_PATH", str(catalog_path))
    result = CliRunner().invoke(app, ["run", str(EXAMPLE), "-o", "out.jsonl"])
    assert result.exit_code == 0, result.output
    for reason in REFUSED.values():  # the CLI prints `<file>:<line>: <reason>`
        assert reason.replace("line ", f"{EXAMPLE}:", 1) in result.output
    rows = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    check_answers({row["custom_id"]: row for row in rows}, fast_demo())


async def test_the_mixed_file_through_the_batch_api_and_the_openai_sdk(backend: Backend) -> None:
    catalog = fast_demo()
    async with serve_api(backend, catalog=catalog) as api:
        client = api.openai(await api.key("acme"))
        uploaded = await client.files.create(file=("chat.jsonl", EXAMPLE.read_bytes()), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = await finished(client, created.id)
        assert batch.status == "completed"
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (14, 3)
        check_answers(await results(client, batch.output_file_id), catalog)
        errors = await results(client, batch.error_file_id)
        assert {cid: row["error"]["message"] for cid, row in errors.items()}.keys() == REFUSED.keys()
        for cid, reason in REFUSED.items():
            assert errors[cid]["error"]["message"].startswith(reason), errors[cid]["error"]["message"]
