"""Processes for fleet tests: `routeq sim` and `routeq worker` subprocesses on loopback, plus redis-server.

Every process is started with a log file and stopped by the `Fleet` that started it (SIGTERM, then
SIGKILL after a deadline), so a failing test never leaves a process behind. A test interrupted inside
that clean-up (pytest-timeout raises wherever the test is) could still leave one: every process
spawned is also killed when the test process exits. A leftover worker would otherwise go on taking
the fleet's sweeper lock in the test Redis database, and later tests' sweeps would never run.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2

from storage import keys
from storage.settings import Settings

ROUTEQ = shutil.which("routeq", path=str(Path(sys.executable).parent))

_SPAWNED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_leftovers() -> None:
    for proc in _SPAWNED:
        if proc.poll() is None:
            proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The per-test timeout of tests that start processes (pytest-timeout's default is 60 s): above every
# deadline such a test waits with, so a slow machine fails a deadline that names what it waited for.
PROCESS_TEST_TIMEOUT_S = 300


async def until(check: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 0.05) -> None:
    """Poll `check` (sync or async) until it is truthy; fail naming `what` after `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = check()
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(every_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None


def routeq_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `routeq` process on the test's Redis, database and queue, simulating."""
    return {**os.environ, **settings.fleet_env(), "ROUTEQ_SIMULATE": "always", **extra}


class Fleet:
    """Starts and always stops the subprocesses of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.tmp_path / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(argv, env=dict(env or os.environ), stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        _SPAWNED.append(proc)
        return proc

    async def sim(self, catalog: Path) -> str:
        """Start `routeq sim` for `catalog`; returns its base URL once it answers."""
        assert ROUTEQ is not None
        port = free_port()
        self.spawn("sim", [ROUTEQ, "sim", "--port", str(port), "--catalog", str(catalog)])
        url = f"http://127.0.0.1:{port}"

        async def healthy() -> bool:
            assert self.procs["sim"].poll() is None, self.log("sim")
            try:
                async with httpx2.AsyncClient() as client:
                    return (await client.get(f"{url}/_sim/health")).status_code == 200
            except httpx2.TransportError:
                return False

        await until(healthy, timeout_s=30, what="the sim server")
        return url

    def worker(self, name: str, settings: Settings, catalog: Path, **env: str) -> subprocess.Popen[bytes]:
        """Start `routeq worker` with the test's Redis, database and queue."""
        assert ROUTEQ is not None
        defaults = {
            "ROUTEQ_CATALOG_PATH": str(catalog),
            "ROUTEQ_WORKER_CONCURRENCY": "50",
            "ROUTEQ_POLL_DELAY_S": "0.02",
            "ROUTEQ_WORKER_METRICS_PORT": "",  # off: several workers on one host would race for 9101
        }
        full_env = routeq_env(settings, **(defaults | env))
        return self.spawn(name, [ROUTEQ, "worker"], full_env)

    def api(self, name: str, settings: Settings, port: int, **env: str) -> subprocess.Popen[bytes]:
        """Start `routeq serve` on `port` with the test's Redis, database and queue."""
        assert ROUTEQ is not None
        return self.spawn(name, [ROUTEQ, "serve", "--port", str(port)], routeq_env(settings, **env))

    async def registered(self, redis: Any, count: int) -> None:
        """Wait until `count` workers are in `routeq:workers` (each started up)."""

        async def enough() -> bool:
            for name, proc in self.procs.items():
                assert proc.poll() is None or not name.startswith("worker"), self.log(name)
            return len(await redis.hkeys(keys.WORKERS)) >= count

        await until(enough, timeout_s=30, what=f"{count} registered workers")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=10)

    def stop_all(self) -> dict[str, int]:
        try:
            return {name: self.stop(name) for name in list(self.procs)}
        finally:  # interrupted (a timeout raised in here): none may outlive the test
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.kill()


@asynccontextmanager
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    running = Fleet(tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


async def finished(client: Any, batch_id: str, *, timeout_s: float) -> list[Any]:
    """Follow the batch's events until `batch.completed`; returns them all."""
    try:
        async with asyncio.timeout(timeout_s):
            return [event async for event in client.events(batch_id)]
    except TimeoutError:
        counts = (await client.batch(batch_id)).counts
        raise AssertionError(f"batch {batch_id} not done after {timeout_s}s: {counts}") from None


async def sim_stats(url: str) -> dict[str, Any]:
    """The sim server's per-deployment counters (requests, admitted, by_outcome, admitted_at)."""
    async with httpx2.AsyncClient() as client:
        response = await client.get(f"{url}/_sim/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()["deployments"]
        return stats


async def set_sim_profile(url: str, deployment: str, profile: Mapping[str, Any]) -> None:
    async with httpx2.AsyncClient() as client:
        (await client.put(f"{url}/_sim/profiles/{deployment}", json=dict(profile))).raise_for_status()


def most_in_any_window(times: list[float], window_s: float) -> int:
    """The largest number of `times` inside any window of `window_s` (a sliding count)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best
