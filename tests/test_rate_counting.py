"""Why counting a call until a window after the latest it can have arrived never earns a 429.

The provider counts a call when it arrives; the fleet knows only bounds on that moment: after its
admission, before its answer (when it was answered) less the time the provider says it held it
(`server_s`, OpenAI's `openai-processing-ms`), and, for a call whose provider said nothing, before
its start plus the arrival margin (`ROUTEQ_RATE_LIMIT_MARGIN_S`, by that setting's definition). Here
a fake clock drives random schedules of calls through `RedisFleetState` (latencies below and above
the margin, answered or not, slow hops between admission and start, providers holding a call
anything from none to all of its latency, reporting it or not), and every call arrives at the worst
moment its bounds allow: the first or last instant, or anywhere between. A call whose provider
reports its hold may arrive any time before its answer less that hold, past the margin too (a
starved worker, a slow network): the reported hold needs no margin. A provider's sliding window
(the sim's rule: an arrival is refused when `rpm` arrivals lie within the window before it) must
never refuse one. A provider that reports a longer hold than it really had breaks the rule, and so
does the margin applied to a call that arrived later than it; the same replay shows both.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

import pytest
from fakeredis import FakeAsyncRedis

from router_core import CallOutcome, FakeClock
from router_core.fleet import Admission
from router_core.providers.openai import processing_s
from storage.fleet.state import RedisFleetState
from tests.fleet_state_contract import dep

RPM, WINDOW_S, MARGIN_S = 4, 1.0, 0.3


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    kind: str = field(compare=False)  # "try" | "start" | "end"
    call: int = field(compare=False)


@dataclass
class _Call:
    admission: Admission | None = None
    admitted_at: float = 0.0
    started_at: float = 0.0
    latency_s: float = 0.0
    answered: bool = True
    held_s: float = 0.0  # how long the provider really held it, from counting it to its answer
    reports: bool = True  # the provider says how long it held it (`openai-processing-ms`)


def _arrival(rng: random.Random, call: _Call, *, latest_only: bool) -> float:
    """The worst moment the call can really have arrived: first, last, or in between (`latest_only`:
    the last). An answered call arrived at least its true hold before its answer; one whose provider
    reports nothing, or that was not answered, within the margin after its start."""
    if call.answered and call.reports:
        latest = call.started_at + call.latency_s - call.held_s
    elif call.answered:
        latest = min(call.started_at + MARGIN_S, call.started_at + call.latency_s - call.held_s)
    else:
        latest = call.started_at + MARGIN_S
    if latest_only:
        return latest
    return rng.choice([call.admitted_at, latest, rng.uniform(call.admitted_at, latest)])


def _most_in_a_window(arrivals: list[float]) -> int:
    """The sim's check, at every arrival: how many arrivals lie within the window before it."""
    ordered = sorted(arrivals)
    return max(sum(1 for b in ordered if a - WINDOW_S < b <= a) for a in ordered)


async def _replay(
    seed: int, *, overclaim_s: float = 0.0, latest_only: bool = False, unheard: bool = False
) -> int:
    """Run 60 calls through the fleet's rate counting; the most arrivals any provider window saw.

    A reporting provider reports each call's true hold (to the millisecond, less one as the adapter
    takes off), or that plus `overclaim_s`; `unheard`: the fleet is not told the reports (as if the
    header were missing) while the calls still arrive as late as the reports allow.
    """
    rng = random.Random(seed)
    clock = FakeClock(start=0.0)
    redis = FakeAsyncRedis()
    fleet = RedisFleetState(redis, clock=clock, arrival_margin_s=MARGIN_S)
    limited = dep(rpm=RPM, rate_window_s=WINDOW_S)
    calls = [_Call() for _ in range(60)]
    events = [_Event(rng.uniform(0, 3), n, "try", n) for n in range(len(calls))]
    heapq.heapify(events)
    seq, arrivals = len(events), []
    while events:
        event = heapq.heappop(events)
        clock.advance(event.at - clock.now())
        call, seq = calls[event.call], seq + 1
        if event.kind == "try":
            call.admission = await fleet.admit(limited, 10)
            if not call.admission.admitted:
                retry = (call.admission.retry_after_s or 0.0) + rng.uniform(0, 0.2)
                heapq.heappush(events, _Event(clock.now() + retry, seq, "try", event.call))
                continue
            call.admitted_at = clock.now()
            heapq.heappush(events, _Event(clock.now() + rng.uniform(0, 0.2), seq, "start", event.call))
        elif event.kind == "start":
            call.started_at = clock.now()
            call.latency_s = rng.choice([0.01, 0.05, 0.2, MARGIN_S, 0.8, 2.0])
            call.answered = rng.random() < 0.75
            # Some providers hold a call its whole latency (no network), some part of it, some
            # none of it (a call that took long to reach them); some say nothing of it.
            call.held_s = rng.choice([0.0, call.latency_s / 2, call.latency_s])
            call.reports = rng.random() < 0.7
            heapq.heappush(events, _Event(clock.now() + call.latency_s, seq, "end", event.call))
        else:
            assert call.admission is not None
            outcome = CallOutcome.SUCCESS if call.answered else CallOutcome.NEUTRAL
            latency_ms = (clock.now() - call.started_at) * 1000
            reported = processing_s({"openai-processing-ms": str(math.floor(call.held_s * 1000))})
            told = call.answered and call.reports and reported is not None and not unheard
            await fleet.release(
                limited,
                call.admission,
                outcome,
                latency_ms,
                None,
                answered=call.answered,
                server_s=(reported or 0.0) + overclaim_s if told else None,
            )
            arrivals.append(_arrival(rng, call, latest_only=latest_only))
    await redis.aclose()
    assert len(arrivals) == len(calls)
    return _most_in_a_window(arrivals)


@pytest.mark.parametrize("seed", range(6))
async def test_no_provider_window_sees_more_than_rpm(seed: int) -> None:
    assert await _replay(seed) <= RPM


@pytest.mark.parametrize("seed", range(3))
async def test_the_latest_arrivals_fill_windows_without_passing_rpm(seed: int) -> None:
    """Every call arriving as late as it really can (its answer less its true hold): the counting
    is tight, the windows fill up to rpm and no further."""
    assert await _replay(seed, latest_only=True) == RPM


@pytest.mark.parametrize("seed", range(3))
async def test_a_provider_claiming_a_longer_hold_than_it_had_earns_429s(seed: int) -> None:
    """The bound holds only while the reported hold is true: 0.3 s more than the truth (the count
    still never ends before a call's start), and the calls arriving as late as they really could
    push some provider window past rpm."""
    assert await _replay(seed, overclaim_s=0.3, latest_only=True) > RPM


async def test_the_margin_does_not_bound_a_call_that_arrived_later_than_it() -> None:
    """Why a reported hold replaces the margin instead of joining it: calls that reached their
    provider more than the margin after their start (a starved worker) and were counted by the
    margin rule alone (the fleet not told their hold) push provider windows past rpm (in most
    schedules: a schedule may have too few such calls to overlap)."""
    most = [await _replay(seed, latest_only=True, unheard=True) for seed in range(6)]
    assert sum(m > RPM for m in most) >= 4, most


async def test_counting_from_the_start_alone_would_not_hold() -> None:
    """The bound matters: a call counted only from its start (no margin, no answer) can arrive late
    enough to share a provider window with `rpm` calls admitted a window after its start."""
    late = [0.0 + MARGIN_S]  # started at 0, arrived at the margin
    on_time = [WINDOW_S + 0.01 * n for n in range(RPM)]  # admitted once the start-based count ended
    assert _most_in_a_window(late + on_time) > RPM
