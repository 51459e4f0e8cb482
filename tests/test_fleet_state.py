"""InMemoryStats against the StatsStore contract."""

from __future__ import annotations

import pytest

from router_core import FakeClock, InMemoryStats
from tests.stats_contract import POLICY, StatsStoreContract


class TestInMemoryStats(StatsStoreContract):
    @pytest.fixture
    def store(self, clock: FakeClock) -> InMemoryStats:
        return InMemoryStats(clock=clock, breaker=POLICY)
