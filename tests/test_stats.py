"""InMemoryStats against the StatsStore contract."""

from __future__ import annotations

import pytest

from router_core import FakeClock, InMemoryStats
from tests.stats_contract import COOLDOWN_S, THRESHOLD, StatsStoreContract


class TestInMemoryStats(StatsStoreContract):
    @pytest.fixture
    def store(self, clock: FakeClock) -> InMemoryStats:
        return InMemoryStats(clock=clock, failure_threshold=THRESHOLD, cooldown_s=COOLDOWN_S)
