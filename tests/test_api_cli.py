"""`routeq serve` refuses to start without its services, naming them, and stops in bounded time;
`routeq keys` makes, lists, revokes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from producer.api.stopping import Stopping
from producer.cli import app
from storage.sql.schema import jobs
from storage.sql.store import Store
from tests.backends import open_backend
from tests.fleet import PROCESS_TEST_TIMEOUT_S, fleet, free_port, until

# Each test here starts Python processes (workers, a sim, an API) and waits on conditions with deadlines
# of its own; on a busy machine process start-up alone can take tens of seconds, so the per-test
# timeout (60 s in pyproject.toml) is raised above those deadlines instead of cutting them short.
pytestmark = pytest.mark.timeout(PROCESS_TEST_TIMEOUT_S)

runner = CliRunner()


def test_serve_without_redis_says_which_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ROUTEQ_REDIS_URL", raising=False)
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/k.db")
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "ROUTEQ_REDIS_URL" in result.output
    assert "routeq run FILE --serve" in result.output


def test_serve_with_unreachable_redis_masks_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEQ_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "127.0.0.1:1" in result.output
    assert "hunter2" not in result.output


@pytest.mark.parametrize(("setting", "logged"), [(None, True), ("false", False)])
def test_serve_logs_each_request_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setting: str | None, logged: bool
) -> None:
    """uvicorn's access log is on by default; ROUTEQ_API_ACCESS_LOG=false turns it off."""
    from producer.api.app import ApiServer  # noqa: PLC0415 - what `serve` imports on use
    from producer.cli import serving  # noqa: PLC0415

    async def services_up(settings: object) -> None:
        return None

    started: list[bool] = []

    def run(server: ApiServer) -> None:
        started.append(server.config.access_log)
        server.started = True

    monkeypatch.setattr(serving, "_preflight", services_up)
    monkeypatch.setattr(ApiServer, "run", run)
    monkeypatch.setenv("ROUTEQ_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached: preflight is stubbed
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/serve.db")
    if setting is None:
        monkeypatch.delenv("ROUTEQ_API_ACCESS_LOG", raising=False)
    else:
        monkeypatch.setenv("ROUTEQ_API_ACCESS_LOG", setting)
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 0, result.output
    assert started == [logged]


def test_keys_create_list_revoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", url)
    created = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--user", "ana", "--admin"])
    assert created.exit_code == 0, created.output
    secret = created.output.strip().splitlines()[-1]
    assert secret.startswith("rq-")
    assert len(secret) > 40

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0
    assert "acme" in listed.output
    assert secret not in listed.output.replace("\n", "")
    # Whole ids on an 80-column terminal, to be copied into `routeq keys revoke`; rights are named.
    listed_ids = re.findall(r"key_[0-9a-f]+", listed.output)
    assert [len(i) for i in listed_ids] == [len("key_") + 24], listed.output
    assert listed.output.splitlines()[1].split()[2:5] == ["admin", "acme", "ana"], listed.output

    async def lookup() -> tuple[str | None, bool]:
        store = await Store.open(url)
        try:
            key = await store.api_keys.authenticate(secret)
            return (key.id if key else None), bool(key and key.admin)
        finally:
            await store.close()

    key_id, admin = asyncio.run(lookup())
    assert key_id == listed_ids[0]
    assert admin
    revoked = runner.invoke(app, ["keys", "revoke", listed_ids[0]])  # the id as `keys list` printed it
    assert revoked.exit_code == 0
    assert asyncio.run(lookup())[0] is None
    assert runner.invoke(app, ["keys", "revoke", "key_nope"]).exit_code == 1


def test_run_serve_keeps_the_embedded_stack_up_in_dev_mode(tmp_path: Path) -> None:
    """`routeq run FILE --serve PORT`: the batch runs, then the API answers without keys until Ctrl-C."""
    batch = tmp_path / "two.jsonl"
    batch.write_text('{"prompt": "hello"}\n{"prompt": "good morning"}\n')
    port = free_port()
    env = {
        **os.environ,
        "ROUTEQ_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/serve.db",
        "ROUTEQ_SIMULATE": "always",
        "ROUTEQ_REDIS_URL": "",
        "ROUTEQ_CATALOG_PATH": "",
    }
    routeq = Path(sys.executable).with_name("routeq")
    proc = subprocess.Popen(
        [str(routeq), "run", str(batch), "-o", str(tmp_path / "out.jsonl"), "--serve", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # a process start, bounded: not a timing check
            try:
                if httpx2.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.1)
        body = {"model": "router:cost", "messages": [{"role": "user", "content": "hi"}]}
        reply = httpx2.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        job_id = reply.headers["x-routeq-job-id"]
        job = httpx2.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        assert job["status"] == "succeeded"
        assert job["attempts"][0]["simulated"] is True
        assert httpx2.get(f"{url}/ready", timeout=10).json()["status"] == "ready"
        # The dashboard, without signing in (dev mode): / leads to it, and the batch just run is listed.
        home = httpx2.get(f"{url}/", timeout=10, follow_redirects=True)
        assert home.status_code == 200
        assert str(home.url) == f"{url}/ui"
        batches = httpx2.get(f"{url}/ui/batches", timeout=10).text
        assert ">2/2<" in batches
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 130, output  # the conventional exit status of Ctrl-C
    assert "Traceback" not in output
    assert "dev mode without keys" in output
    assert f"Dashboard: {url}/ui" in output
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 2


def test_keys_create_operator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--operator` makes the fleet's operator key (an admin too); `--admin` alone is not one."""
    url = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    monkeypatch.setenv("ROUTEQ_DATABASE_URL", url)
    made = runner.invoke(app, ["keys", "create", "--tenant", "ops", "--user", "root", "--operator"])
    assert made.exit_code == 0, made.output
    assert "(operator)" in made.output
    operator_secret = made.output.strip().splitlines()[-1]
    admin_secret = runner.invoke(app, ["keys", "create", "--tenant", "t", "--user", "u", "--admin"])
    admin_secret_text = admin_secret.output.strip().splitlines()[-1]

    async def rights(secret: str) -> tuple[bool, bool]:
        store = await Store.open(url)
        try:
            key = await store.api_keys.authenticate(secret)
            assert key is not None
            return key.admin, key.operator
        finally:
            await store.close()

    assert asyncio.run(rights(operator_secret)) == (True, True)
    assert asyncio.run(rights(admin_secret_text)) == (True, False)
    listed = runner.invoke(app, ["keys", "list"])
    assert [line.split()[2] for line in listed.output.splitlines()] == ["rights", "operator", "admin"]


async def test_serve_stops_within_its_grace_period_while_a_chat_completion_waits(tmp_path: Path) -> None:
    """SIGTERM while a chat completion waits for a job no worker runs: the request answers a 503 naming
    its job within ROUTEQ_SHUTDOWN_GRACE_S and `routeq serve` exits as SIGTERM's default would (as
    uvicorn does). uvicorn alone would wait for the request up to ROUTEQ_API_WAIT_TIMEOUT_S (ten
    minutes). The job stays queued, readable by its id."""
    if not os.environ.get("ROUTEQ_TEST_REDIS_URL") and not os.environ.get("CI"):
        pytest.skip("needs the real Redis and PostgreSQL (ROUTEQ_TEST_REDIS_URL, ROUTEQ_TEST_DATABASE_URL)")
    async with open_backend("services", tmp_path) as services, fleet(tmp_path) as procs:
        _, secret = await services.store.api_keys.create(tenant="acme", user_id="u1")
        port = free_port()
        api = procs.api("api", services.settings, port, ROUTEQ_SHUTDOWN_GRACE_S="1")
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx2.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60
        ) as http:

            async def up() -> bool:
                assert api.poll() is None, procs.log("api")
                try:
                    return (await http.get("/health")).status_code == 200
                except httpx2.TransportError:
                    return False

            await until(up, timeout_s=60, what="`routeq serve` to answer /health")
            body = {"model": "auto", "messages": [{"role": "user", "content": "still there?"}]}
            waiting = asyncio.create_task(http.post("/v1/chat/completions", json=body))

            async def job_made() -> list[tuple[str, str]]:
                async with services.store.engine.connect() as conn:
                    query = select(jobs.c.id, jobs.c.status).where(jobs.c.tenant == "acme")
                    return [(row.id, row.status) for row in await conn.execute(query)]

            await until(job_made, timeout_s=30, what="the chat completion's job")
            api.send_signal(signal.SIGTERM)
            # Bounded by the grace period (1 s) plus the process's own stopping, well within 30 s.
            await until(
                lambda: api.poll() is not None, timeout_s=30, what="`routeq serve` to exit on SIGTERM"
            )
            answer = await waiting
        assert answer.status_code == 503, answer.text
        ((job_id, status),) = await job_made()
        assert answer.headers["x-routeq-job-id"] == job_id
        assert answer.headers["Retry-After"] == "1"
        error = answer.json()["error"]
        assert (error["code"], error["job_id"]) == ("server_stopping", job_id)
        assert f"GET /v1/jobs/{job_id}" in error["message"]
        assert status == "queued"
        assert api.returncode == -signal.SIGTERM, procs.log("api")
        assert "Traceback" not in procs.log("api")


async def test_a_stopping_server_cuts_waits_short_and_never_extends_one() -> None:
    stopping = Stopping()
    async with asyncio.timeout(600) as long_wait, asyncio.timeout(0.5) as short_wait:
        short_when = short_wait.when()
        with stopping.cutting(long_wait), stopping.cutting(short_wait):
            assert not stopping.begun
            before = asyncio.get_running_loop().time()
            stopping.begin(grace_s=10)
            after = asyncio.get_running_loop().time()
            assert stopping.begun
            cut = long_wait.when()
            assert cut is not None
            assert before + 9 < cut < after + 10  # before the grace period ends, with a margin
            assert short_wait.when() == short_when  # a wait ending sooner keeps its own deadline
            async with asyncio.timeout(None) as later:  # a wait begun while stopping is cut at once
                with stopping.cutting(later):
                    assert later.when() == cut
                    await asyncio.sleep(0)
