"""The garbage collector of routeq's long-running processes (storage.logs.tune_gc)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from storage.logs import tune_gc
from storage.settings import Settings


class _Node:
    def __init__(self, other: _Node | None = None) -> None:
        self.other = other


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector_restored")
def test_start_up_is_frozen_and_young_objects_collected_less_often() -> None:
    _, middle, oldest = gc.get_threshold()
    gc.unfreeze()
    tune_gc(20_000)
    assert gc.get_threshold() == (20_000, middle, oldest)
    assert gc.get_freeze_count() > 1_000  # this process's modules, pytest's and routeq's
    cycle = _Node()  # garbage in a reference cycle made after the freeze is still collected
    cycle.other = _Node(cycle)
    gone = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert gone() is None


@pytest.mark.usefixtures("collector_restored")
def test_zero_keeps_pythons_own_settings() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    tune_gc(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_processes_tune_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTEQ_GC_THRESHOLD", raising=False)  # tests/conftest.py sets 0
    assert Settings(_env_file=None).gc_threshold == 20_000
