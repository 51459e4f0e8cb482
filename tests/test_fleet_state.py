"""InMemoryFleetState against the FleetState contract."""

from __future__ import annotations

import pytest

from router_core import FakeClock, InMemoryFleetState
from tests.fleet_state_contract import POLICY, FleetStateContract


class TestInMemoryFleetState(FleetStateContract):
    @pytest.fixture
    def fleet(self, clock: FakeClock) -> InMemoryFleetState:
        return InMemoryFleetState(clock=clock, breaker=POLICY)

    @pytest.fixture
    def untrusting(self, clock: FakeClock) -> InMemoryFleetState:
        return InMemoryFleetState(clock=clock, breaker=POLICY, trust_processing_time=False)
