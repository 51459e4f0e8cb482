"""Schemathesis against the live API's own `/openapi.json`: no generated request gets a 5xx.

The API runs on loopback with a live worker (embedded backend: fakeredis + in-memory SQLite), so chat
completions and batches really run. It is served from a background thread with its own event loop:
schemathesis calls it synchronously from the test, and the test's thread must not block the loop
the server runs in. Every operation gets a bounded, derandomized run: the same requests every time.

Besides "no 5xx", every answer must be valid HTTP, any JSON it declares must parse, and every 4xx
must be in the OpenAI error shape (`{"error": {message, type, param, code}}`) that errors.py promises.

A last test sends what the generators never produce (naive or off-calendar times, lone surrogates).

Left out: the two `/events` routes. They are server-sent event streams that end only with their
batch's (or job's) completion, and generated ids never complete, so a request would block until its
timeout; tests/test_api_isolation.py reads them to the end with real ids.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import BaseSchema

from producer.api import create_app
from storage.settings import Settings
from tests.api_harness import serve_api
from tests.backends import open_backend

# A chat request never waits longer than this for its job; any request is abandoned after REQUEST_S.
WAIT_S = 5
REQUEST_S = 15
START_S = 20
CASES = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,
)
HELLO = [{"role": "user", "content": "Say hello to the lighthouse keeper"}]
BATCH_FILE = json.dumps(
    {
        "custom_id": "q-0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "auto", "messages": [{"role": "user", "content": "Name a lighthouse"}]},
    }
)
# Phases: the schema's examples, then random input (fuzzing). The admin run adds the coverage phase
# (every boundary of every field, missing and wrong-typed ones, odd content types: deterministic, and
# the likeliest to find a 5xx); the plain key's run differs from it only where admin rights matter.
ALL_PHASES: dict[str, Any] = {"seed": 1}
NO_COVERAGE: dict[str, Any] = {"seed": 1, "phases": {"coverage": {"enabled": False}}}


@dataclass(frozen=True)
class Live:
    url: str
    admin: str  # an admin key's secret: every route, admin ones included, runs to its end
    plain: str  # a plain key's secret (of another tenant)


class ApiThread:
    """`serve_api` on the embedded backend, in a thread with its own event loop, until `stop()`."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.live: Live | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="routeq-api", daemon=True)

    def start(self) -> Live:
        self._thread.start()
        if not self._ready.wait(START_S):
            raise TimeoutError(f"the API did not start within {START_S}s")
        if self.error is not None:
            raise RuntimeError("the API failed to start") from self.error
        assert self.live is not None
        return self.live

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_S)
        assert not self._thread.is_alive(), "the API thread did not stop"
        if self.error is not None:
            raise RuntimeError("the API thread failed") from self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # re-raised in the test's thread by start() / stop()
            self.error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with (
            open_backend("embedded", self.tmp_path) as backend,
            serve_api(backend, api_wait_timeout_s=WAIT_S) as api,
        ):
            self.live = Live(api.url, await api.key("acme", admin=True), await api.key("globex"))
            self._ready.set()
            await self._stop.wait()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    thread = ApiThread(tmp_path_factory.mktemp("api"))
    try:
        yield thread.start()
    finally:
        thread.stop()


# The schema is needed when tests are collected, before any server runs: it is the app's own, and
# test_the_live_api_serves_this_schema checks that the running API serves exactly this document.
# (`schemathesis.pytest.from_fixture`, which would load it from the live URL, fails on pytest 9:
# it sets `Function._nodeid`, which pytest 9 no longer has.)
OPENAPI = create_app(Settings(_env_file=None)).openapi()


def with_examples(openapi: dict[str, Any]) -> dict[str, Any]:
    """The schema plus one valid request for the routes random input almost never gets right, so the
    examples phase runs them to the end: completions plain and streamed (through the worker), a job,
    an upload, a deployment set back to auto, one model."""
    seeded = copy.deepcopy(openapi)
    paths = seeded["paths"]
    examples: dict[tuple[str, str], list[dict[str, Any]]] = {
        ("/v1/chat/completions", "application/json"): [
            {"model": "auto", "messages": HELLO, "max_tokens": 50},
            {
                "model": "router:speed",
                "messages": HELLO,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ],
        ("/v1/jobs", "application/json"): [{"prompt": "Say hi", "custom_id": "example"}],
        ("/v1/files", "multipart/form-data"): [{"purpose": "batch", "file": BATCH_FILE}],
        ("/v1/admin/deployments/{deployment_id}/state", "application/json"): [{"state": "auto"}],
    }
    for (path, media_type), bodies in examples.items():
        content = paths[path]["post"]["requestBody"]["content"][media_type]
        content["examples"] = {f"valid-{i}": {"value": body} for i, body in enumerate(bodies)}
    paths["/v1/admin/deployments/{deployment_id}/state"]["post"]["parameters"][0]["example"] = "cheap-a"
    paths["/v1/models/{model}"]["get"]["parameters"][0]["example"] = "router:cost"
    return seeded


def load(config: dict[str, Any]) -> BaseSchema:
    seeded = with_examples(OPENAPI)
    return schemathesis.openapi.from_dict(seeded, config=schemathesis.Config.from_dict(config)).exclude(
        path_regex=r"/events$"
    )


every_phase = load(ALL_PHASES)
no_coverage = load(NO_COVERAGE)


def test_the_live_api_serves_this_schema(live: Live) -> None:
    served = httpx2.get(f"{live.url}/openapi.json", timeout=REQUEST_S)
    assert served.status_code == 200
    assert served.json() == OPENAPI


def call(case: Case[Any], live: Live, secret: str) -> None:
    """Send the case with `secret` as its key; fail on a 5xx or an answer out of contract."""
    headers = {"Authorization": f"Bearer {secret}"}
    response = case.call(base_url=live.url, headers=headers, timeout=REQUEST_S)
    sent = {"base_url": live.url, "headers": headers, "timeout": REQUEST_S}
    case.validate_response(response, checks=[not_a_server_error], headers=headers, transport_kwargs=sent)
    reproduce = case.as_curl_command(headers)
    assert 200 <= response.status_code < 500, reproduce
    media_type = response.headers.get("content-type", [""])[0].split(";")[0]
    if response.status_code >= 400:
        assert media_type == "application/json", reproduce
        body = response.json()
        assert isinstance(body, dict), reproduce
        assert set(body) == {"error"}, reproduce
        assert set(body["error"]) == {"message", "type", "param", "code"}, reproduce
        assert body["error"]["message"], reproduce
    elif media_type == "application/json":
        response.json()


# One pytest item per operation. On pytest 9 they share the test's node id (schemathesis names them by
# `name`, pytest 9 builds ids from `originalname`); a failure's header and curl name the operation.
@CASES
@every_phase.parametrize()
def test_no_server_errors_with_an_admin_key(case: Case[Any], live: Live) -> None:
    call(case, live, live.admin)


@CASES
@no_coverage.parametrize()
def test_no_server_errors_with_a_plain_key(case: Case[Any], live: Live) -> None:
    call(case, live, live.plain)


# Requests outside what the generators produce: naive or out-of-calendar times (the schema says RFC 3339
# date-time, with an offset), and JSON string escapes for a lone surrogate (generated text is UTF-8).
# Each of these once answered 500 (a TypeError, an OverflowError, a UnicodeEncodeError in SQL).
LINE = json.dumps(
    {"custom_id": "\ud800", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": HELLO}}
)
EDGES = [
    pytest.param(
        "/v1/analytics", {"since": "2024-01-01T00:00:00", "until": "2024-02-01T00:00:00"}, id="naive"
    ),
    pytest.param("/v1/analytics", {"since": "2024-01-01T00:00:00"}, id="naive-since"),
    pytest.param(
        "/v1/analytics",
        {"since": "2024-01-01T00:00:00+00:00", "until": "2024-02-01T00:00:00"},
        id="aware-since-naive-until",
    ),
    pytest.param("/v1/analytics", {"until": "0001-01-01T00:00:00Z"}, id="until-year-1"),
    pytest.param("/v1/analytics", {"since": "0001-01-01T00:00:00+14:00"}, id="since-before-year-1"),
    pytest.param("/v1/cache/stats", {"since": "2024-01-01T00:00:00"}, id="cache-naive-since"),
    pytest.param("/v1/cache/stats", {"since": "0001-01-01T00:00:00+14:00"}, id="cache-since-before-year-1"),
    pytest.param("/v1/jobs", b'{"prompt": "hi", "custom_id": "\\ud800"}', id="job-surrogate-custom-id"),
    pytest.param("/v1/chat/completions", b'{"model": "\\ud800", "messages": []}', id="chat-surrogate-model"),
    pytest.param("/v1/batches", LINE.encode() + b"\n", id="batch-surrogate-custom-id"),
]


@pytest.mark.parametrize(("path", "request_"), EDGES)
def test_edge_requests_get_no_server_error(live: Live, path: str, request_: dict[str, str] | bytes) -> None:
    headers = {"Authorization": f"Bearer {live.admin}"}
    with httpx2.Client(base_url=live.url, headers=headers, timeout=REQUEST_S) as client:
        if isinstance(request_, dict):
            response = client.get(path, params=request_)
        elif path == "/v1/batches":
            uploaded = client.post(
                "/v1/files", data={"purpose": "batch"}, files={"file": ("e.jsonl", request_)}
            )
            batch = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
            response = client.post(path, json=batch | {"input_file_id": uploaded.json()["id"]})
        else:
            response = client.post(path, content=request_, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
