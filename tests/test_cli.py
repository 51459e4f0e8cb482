"""The `routeq` command line: catalog validation and the sim server as a separate process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from rich.console import Console
from typer.testing import CliRunner

from producer.cli import app, tools
from router_core import ChatRequest, Router, RouterSettings, SimulateMode
from tests.fleet import PROCESS_TEST_TIMEOUT_S

runner = CliRunner()


def test_catalog_command_lists_demo_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "console", Console(width=400))
    result = runner.invoke(app, ["catalog"])
    assert result.exit_code == 0, result.output
    assert "gpt-4o-mini" in result.output
    assert "genai-prices" in result.output
    llama = next(line for line in result.output.splitlines() if "llama-3.3-70b" in line)
    assert "tools, parallel_tool_calls, json_object, seed, stop, temperature" in llama  # what it honours
    assert "vision" not in llama
    embed = next(line for line in result.output.splitlines() if "openai-embed" in line)
    assert "embedding (256 dims)" in embed
    assert "text-embedding-3-small" in embed


def test_catalog_command_reports_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[deployments]]\nid = "x"\nkind = "openai"\nmodel = "gpt-4o-mini"\nquality = 3\n')
    result = runner.invoke(app, ["catalog", str(bad)])
    assert result.exit_code == 2
    assert "config error" in result.output
    assert "bad.toml" in result.output
    assert "'x'" in result.output
    assert "Traceback" not in result.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def sim_server() -> Iterator[str]:
    """`routeq sim` in its own process on a free loopback port; stopped after the test."""
    port = free_port()
    routeq = Path(sys.executable).with_name("routeq")
    proc = subprocess.Popen(
        [str(routeq), "sim", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "ROUTEQ_CATALOG_PATH": ""},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60  # a process start: slow on a busy machine, never a timing check
    try:
        while True:  # wait for the process to listen: bounded, it is a process start, not a timing check
            try:
                if httpx2.get(f"{url}/_sim/health", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"routeq sim did not start: {err}")
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT_S)
def test_router_over_loopback_sim_server(sim_server: str) -> None:
    async def scenario() -> None:
        settings = RouterSettings(simulate=SimulateMode.ALWAYS, sim_url=sim_server)
        async with Router.from_settings(settings) as router:
            assert router.sim_world is None  # the server's world is the only one: tune it over HTTP
            for model in ("gpt-4o-mini", "claude-haiku-4-5", "llama-3.3-70b"):
                request = ChatRequest.model_validate(
                    {
                        "messages": [{"role": "user", "content": "ping"}],
                        "model": model,
                        "max_tokens": 8,
                        "preferences": {"timeout_ms": 10_000},
                    }
                )
                result = await router.complete(request)
                assert result.simulated, "the server's x-routeq-simulated header must reach the result"
                assert result.deployment == model
        async with httpx2.AsyncClient() as client:
            stats = (await client.get(f"{sim_server}/_sim/stats")).json()
        assert stats["deployments"]["gpt-4o-mini"]["requests"] >= 1

    asyncio.run(scenario())
