"""`/v1/providers` says which deployments are simulated: as the live workers report it (their keys
and ROUTEQ_SIMULATE decide, not the API's), else as the API's own settings and environment say."""

from __future__ import annotations

import time

import httpx2
import pytest

from storage import keys
from storage.bus.registry import worker_record
from tests.api_harness import serve_api
from tests.backends import Backend
from tests.conftest import deployment, make_catalog

# One deployment always simulated (kind sim), one real OpenAI-wire one when its key is set.
CATALOG = make_catalog(
    [
        deployment("sim-a"),
        deployment(
            "real-b", kind="openai", api_key_env="ROUTEQ_TEST_REAL_B_KEY", base_url="http://127.0.0.1:9"
        ),
    ]
)


async def test_providers_say_which_deployments_are_simulated(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTEQ_TEST_REAL_B_KEY", "sk-never-sent")  # no call is made: only listed
    async with (
        serve_api(backend, catalog=CATALOG, worker=False, simulate="auto", api_dev_mode=True) as api,
        httpx2.AsyncClient(base_url=api.url) as http,
    ):

        async def simulated() -> dict[str, bool]:
            reply = (await http.get("/v1/providers")).raise_for_status().json()
            return {p["id"]: p["simulated"] for p in reply["data"]}

        # No worker registered: the API's own view (the key is set here, so real-b is real).
        assert await simulated() == {"sim-a": True, "real-b": False}
        # A live worker without the key serves real-b from the sim: the workers' word counts.
        redis = await backend.redis()
        record = worker_record(time.time(), simulated={"sim-a", "real-b"})
        await redis.hset(keys.WORKERS, "w:1:1", record)  # type: ignore[misc]
        assert await simulated() == {"sim-a": True, "real-b": True}
