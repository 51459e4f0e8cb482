"""Live deployment state behind one interface, so it can live in-process or in Redis for a fleet.

Before planning, the router reads a `snapshot` (success rate, latency EWMA, in-flight count, circuit
state, rate-limit usage). Before every provider call it asks `admit`, which atomically checks and
takes what the call needs: the circuit (and a half-open probe slot), a concurrency slot, a request
and the estimated tokens in the rate window. After the call, `release` gives the slot back, corrects
the token count to the real usage and feeds the outcome to the breaker and the live stats.

The breaker, per deployment:

    CLOSED ──(failure_threshold failures, at least min_failure_ratio of calls, within window_s)──▶ OPEN
    OPEN ──(cooldown_s)──▶ HALF_OPEN: at most `probes` calls at a time are let through
    HALF_OPEN ──probe succeeds──▶ CLOSED          HALF_OPEN ──probe fails──▶ OPEN (cooldown again)

An operator can force a deployment down (never admitted) or up (admitted whatever the breaker says)
until the override is cleared.

A call with a spend budget asks `admit` with its hold (`SpendHold`: the run's `SpendGuard`, the
attempt, its worst-case cost): it is admitted only if its budget has room too, and the hold is
taken only if it is admitted. `RedisFleetState` checks and takes both in one script when the guard
can say its hold as script keys (`script_hold`); any other pairing reserves, then admits, and gives
the hold back if refused (`admit_holding`).

Rate windows (rpm, tpm). The provider counts a call when it arrives, and the fleet cannot see that
moment: only bounds on it. A call arrives no earlier than its admission (the router sends it after),
and no later than the provider's answer (it answered what arrived); and, by the margin's definition
(`ROUTEQ_RATE_LIMIT_MARGIN_S`), no later than `arrival_margin_s` after the router started it. A
provider that says how long it held the request (OpenAI's `openai-processing-ms`: `server_s`, from
counting it to answering) moves the second bound earlier: it counted the call at A, answered at
A + server_s, and the answer reached us at our release R >= A + server_s. Durations do not depend
on whose clock measures them, so A <= R - server_s on ours. (Never before the call's start: a
reported time longer than the call is not believed past that.) That bound needs no assumption, so
the margin's, which fails when a starved worker (or network) takes longer than the margin to get a
call to the provider, is not used for such a call. So a call counts from its admission until one
rate window after the latest moment it can have arrived:

    answered, with the provider's hold (server_s)              max(release - server_s, start)
    answered otherwise (a reply or an error status)            min(release, start + margin)
    not answered (timeout, connection error, cancelled)         start + margin

`server_s` is None when the provider says nothing (Anthropic; an OpenAI-compatible server without
the header; an error status) or is not trusted (`ROUTEQ_TRUST_PROCESSING_TIME=false`). The bound
holds as long as the reported time is no longer than the provider really held the call after
counting it; the adapter takes a millisecond off the whole milliseconds it reports, for rounding.

Why this cannot let a provider's sliding window see more than `rpm` calls: take any window the
provider checks, (a - W, a], and the call L of it admitted last. At L's admission (at or before
a) every other call i of the window was admitted already, and arrived after a - W, so after
L's admission minus W. Its count ends a window after a bound on its arrival, so later than that
admission: it was still counted when L was admitted, and L was admitted only with fewer than
`rpm` counted. (A fixed-window or token-bucket provider accepts whatever a sliding one does.)
The price: a window also holds the calls in flight, and a short call holds its slot until a
window after its answer less the provider's reported hold (on top of the window: the network both
ways and whatever the provider does not report); without that header, its whole latency, and a call
slower than the margin holds it only until a window after its start plus the margin.

`InMemoryFleetState` is the single-process implementation; `storage.fleet.state.RedisFleetState`
keeps the same state in Redis for every worker. `tests/fleet_state_contract.py` is the behaviour
both must have.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import count
from typing import TYPE_CHECKING, Protocol

from router_core.clock import Clock, SystemClock
from router_core.spend import SpendGuard, SpendRefusal

if TYPE_CHECKING:
    # Annotations only: the catalog pulls in genai-prices, which settings (and so every CLI
    # command) would otherwise pay for.
    from router_core.catalog import Deployment

__all__ = [
    "ARRIVAL_MARGIN_S",
    "Admission",
    "BreakerPolicy",
    "CallOutcome",
    "CircuitState",
    "DeploymentSnapshot",
    "FleetState",
    "Forced",
    "InMemoryFleetState",
    "Refusal",
    "SpendHold",
    "admit_holding",
    "counted_until",
]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Forced(StrEnum):
    """An operator's override of the breaker, kept until cleared."""

    DOWN = "down"
    UP = "up"


class CallOutcome(StrEnum):
    """How a call counts for health: `NEUTRAL` (429, a bad request) says nothing about health."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


class Refusal(StrEnum):
    """Why `admit` did not let a call through."""

    FORCED_DOWN = "forced_down"
    CIRCUIT_OPEN = "circuit_open"  # open, or half-open with every probe slot taken
    CONCURRENCY = "concurrency"  # max_concurrency calls already in flight, fleet-wide
    RPM = "rpm"
    TPM = "tpm"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    window_s: float = 30.0
    min_failure_ratio: float = 0.5
    cooldown_s: float = 30.0
    probes: int = 1


@dataclass(frozen=True, slots=True)
class DeploymentSnapshot:
    """One deployment's live state as `FleetState.snapshot` reads it: health, breaker, load, rate use."""

    success_rate: float = 1.0
    latency_ewma_ms: float | None = None
    in_flight: int = 0
    circuit: CircuitState = CircuitState.CLOSED
    calls: int = 0
    forced: Forced | None = None
    requests_in_window: int = 0  # counted against rpm over the deployment's rate window
    tokens_in_window: int = 0  # counted against tpm


@dataclass(frozen=True, slots=True)
class SpendHold:
    """The budget hold a call needs to be admitted (`FleetState.admit(..., hold=)`): `amount_usd`,
    its worst case, held by `guard` for attempt `attempt_no` on `deployment_id`."""

    guard: SpendGuard
    attempt_no: int
    deployment_id: str
    amount_usd: float


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of `admit`: a ticket to call, or the reason not to and when to ask again.

    `spend_refusal`: the call's budget had no room for its hold (nothing was taken)."""

    ticket: str | None
    refusal: Refusal | None = None
    retry_after_s: float | None = None
    probe: bool = False
    spend_refusal: SpendRefusal | None = None

    @property
    def admitted(self) -> bool:
        return self.ticket is not None

    def describe(self, deployment_id: str) -> str:
        if self.spend_refusal is not None:
            return f"{deployment_id}: {self.spend_refusal}"
        if self.refusal is None:
            return f"{deployment_id}: admitted"
        when = f"; room again in {self.retry_after_s:.2f}s" if self.retry_after_s is not None else ""
        return f"{deployment_id}: {_REFUSAL_TEXT[self.refusal]}{when}"


_REFUSAL_TEXT = {
    Refusal.FORCED_DOWN: "forced down by an operator",
    Refusal.CIRCUIT_OPEN: "circuit open",
    Refusal.CONCURRENCY: "max_concurrency calls already in flight",
    Refusal.RPM: "requests-per-window limit (rpm) reached",
    Refusal.TPM: "tokens-per-window limit (tpm) reached",
}

# How long a refused caller should wait when only the in-flight calls can free room.
CONCURRENCY_RETRY_S = 0.25

ARRIVAL_MARGIN_S = 1.0
"""The default bound on the time from a call's start (the router handing it to the provider's
SDK) to the provider counting it: the SDK's request build, the network, the provider's queue
(`ROUTEQ_RATE_LIMIT_MARGIN_S`). Only calls slower than this whose provider does not report its
hold end their count before their answer."""


def counted_until(
    now: float,
    latency_s: float | None,
    *,
    answered: bool,
    margin_s: float,
    server_s: float | None = None,
) -> float:
    """When an ended call stops counting in its deployment's rate window, less the window.

    `now`: its release; `latency_s`: from its start to now (None: unknown, taken as 0); `answered`:
    the provider replied (a response or an error status); `server_s`: how long the provider says
    it held the call after counting it (None: it did not say). See the module docstring.
    """
    started = now - (latency_s or 0.0)
    if not answered:
        return started + margin_s
    if server_s is not None:
        return max(now - server_s, started)
    return min(now, started + margin_s)


async def admit_holding(admit: Callable[[], Awaitable[Admission]], hold: SpendHold | None) -> Admission:
    """`admit()` behind `hold`, for a fleet state that cannot check and take both in one step: the
    hold is reserved first (refused: nothing else is asked), then given back if the call is not
    admitted."""
    if hold is None:
        return await admit()
    refusal = await hold.guard.reserve(hold.attempt_no, hold.deployment_id, hold.amount_usd)
    if refusal is not None:
        return Admission(None, spend_refusal=refusal)
    admission = await admit()
    if not admission.admitted:
        await hold.guard.release(hold.attempt_no)
    return admission


class FleetState(Protocol):
    """Where live stats, breakers and limits are kept."""

    async def snapshot(self, deployment_ids: Sequence[str]) -> Mapping[str, DeploymentSnapshot]: ...

    async def admit(
        self, deployment: Deployment, tokens: int, *, waiter: str | None = None, hold: SpendHold | None = None
    ) -> Admission:
        """Atomically check and take what one call needs; `tokens` is the worst-case estimate.

        `waiter`: the job the call is for, when it may hold a claim on a slot in the fleet's
        waiting line (`storage.fleet.line`): admitted, it gives the claim up in the same step.
        `hold`: its budget hold, taken if and only if the call is admitted (refused for it: the
        answer's `spend_refusal`).
        """
        ...

    async def release(
        self,
        deployment: Deployment,
        admission: Admission,
        outcome: CallOutcome,
        latency_ms: float | None,
        tokens: int | None,
        *,
        answered: bool = True,
        server_s: float | None = None,
        give_back: SpendHold | None = None,
    ) -> None:
        """End an admitted call; `tokens` is the real usage (None keeps the estimate).

        `latency_ms`: from the call's start to now; `answered`: the provider replied (a response or
        an error status), so the call arrived before now; `server_s`: the provider said it held the
        call this long after counting it, so it arrived that long before now (None: it did not say;
        see "Rate windows"). `give_back`: the hold taken with the call, which was not billed: it is
        released with the slot.
        """
        ...

    async def force(self, deployment_id: str, state: Forced | None) -> None:
        """Force a deployment down or up until `force(id, None)` clears it."""
        ...

    async def next_rotation(self, key: str) -> int:
        """A counter that increases by one per call, for round-robin."""
        ...


@dataclass(slots=True)
class _Entry:
    success_rate: float = 1.0
    latency_ewma_ms: float | None = None
    calls: int = 0
    opened_at: float | None = None
    forced: Forced | None = None
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)  # (time, ok) within the window
    in_flight: dict[str, bool] = field(default_factory=dict)  # ticket -> is a probe
    # ticket -> the latest it can have arrived (None while in flight): a call counts against rpm and
    # tpm from its admission until a rate window after that (see "Rate windows" above).
    requests: dict[str, float | None] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # ticket -> tokens counted for tpm
    rate_window_s: float = 60.0  # the deployment's, as of its last admission


class InMemoryFleetState:
    """`FleetState` for one process (tests, the router on its own). Same rules as the Redis one."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        alpha: float = 0.2,
        breaker: BreakerPolicy | None = None,
        arrival_margin_s: float = ARRIVAL_MARGIN_S,
        trust_processing_time: bool = True,
    ) -> None:
        self._clock = clock or SystemClock()
        self._arrival_margin_s = arrival_margin_s
        self._trust_processing_time = trust_processing_time
        self._alpha = alpha
        self.breaker = breaker or BreakerPolicy()
        self._entries: dict[str, _Entry] = {}
        self._rotations: dict[str, count[int]] = {}
        self._tickets = itertools.count(1)

    def _entry(self, deployment_id: str) -> _Entry:
        return self._entries.setdefault(deployment_id, _Entry())

    def _circuit(self, entry: _Entry, now: float) -> CircuitState:
        if entry.forced is Forced.DOWN:
            return CircuitState.OPEN
        if entry.forced is Forced.UP or entry.opened_at is None:
            return CircuitState.CLOSED
        if now - entry.opened_at >= self.breaker.cooldown_s:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def _prune(self, entry: _Entry, window_s: float, now: float) -> None:
        gone = [t for t, ended in entry.requests.items() if ended is not None and ended <= now - window_s]
        for ticket in gone:
            del entry.requests[ticket]
            entry.tokens.pop(ticket, None)
        while entry.outcomes and entry.outcomes[0][0] <= now - self.breaker.window_s:
            entry.outcomes.popleft()

    async def snapshot(self, deployment_ids: Sequence[str]) -> Mapping[str, DeploymentSnapshot]:
        now = self._clock.now()
        out: dict[str, DeploymentSnapshot] = {}
        for dep in deployment_ids:
            entry = self._entries.get(dep)
            if entry is None:
                out[dep] = DeploymentSnapshot()
                continue
            self._prune(entry, entry.rate_window_s, now)
            out[dep] = DeploymentSnapshot(
                success_rate=entry.success_rate,
                latency_ewma_ms=entry.latency_ewma_ms,
                in_flight=len(entry.in_flight),
                circuit=self._circuit(entry, now),
                calls=entry.calls,
                forced=entry.forced,
                requests_in_window=len(entry.requests),
                tokens_in_window=sum(entry.tokens.values()),
            )
        return out

    async def admit(
        self, deployment: Deployment, tokens: int, *, waiter: str | None = None, hold: SpendHold | None = None
    ) -> Admission:
        # One process has no waiting line (`waiter` is for the fleet's, in Redis).
        async def take() -> Admission:
            return self._take(deployment, tokens)

        return await admit_holding(take, hold)

    def _take(self, deployment: Deployment, tokens: int) -> Admission:
        now = self._clock.now()
        entry = self._entry(deployment.id)
        entry.rate_window_s = deployment.rate_window_s
        self._prune(entry, deployment.rate_window_s, now)
        circuit = self._circuit(entry, now)
        refused = self._circuit_refusal(entry, circuit, now) or self._limit_refusal(
            entry, deployment, tokens, now
        )
        if refused is not None:
            return refused
        ticket = f"t{next(self._tickets)}"
        probe = circuit is CircuitState.HALF_OPEN
        entry.in_flight[ticket] = probe
        entry.requests[ticket] = None
        entry.tokens[ticket] = tokens
        return Admission(ticket, probe=probe)

    def _circuit_refusal(self, entry: _Entry, circuit: CircuitState, now: float) -> Admission | None:
        if entry.forced is Forced.DOWN:
            return Admission(None, Refusal.FORCED_DOWN)
        if circuit is CircuitState.OPEN:
            assert entry.opened_at is not None
            return Admission(None, Refusal.CIRCUIT_OPEN, entry.opened_at + self.breaker.cooldown_s - now)
        if circuit is CircuitState.HALF_OPEN and sum(entry.in_flight.values()) >= self.breaker.probes:
            return Admission(None, Refusal.CIRCUIT_OPEN, CONCURRENCY_RETRY_S)
        return None

    def _limit_refusal(self, entry: _Entry, dep: Deployment, tokens: int, now: float) -> Admission | None:
        if dep.max_concurrency is not None and len(entry.in_flight) >= dep.max_concurrency:
            return Admission(None, Refusal.CONCURRENCY, CONCURRENCY_RETRY_S)
        if dep.rpm is not None and len(entry.requests) >= dep.rpm:
            oldest = min(now if ended is None else ended for ended in entry.requests.values())
            return Admission(None, Refusal.RPM, oldest + dep.rate_window_s - now)
        if dep.tpm is not None and sum(entry.tokens.values()) + tokens > dep.tpm:
            return Admission(None, Refusal.TPM, self._tokens_free_in(entry, dep, tokens, now))
        return None

    def _tokens_free_in(self, entry: _Entry, deployment: Deployment, tokens: int, now: float) -> float:
        """Seconds until enough counted tokens leave the window for `tokens` more to fit."""
        assert deployment.tpm is not None
        excess = sum(entry.tokens.values()) + tokens - deployment.tpm
        # Ended calls leave the window in the order they ended; calls in flight after them.
        order = sorted(entry.requests.items(), key=lambda item: math.inf if item[1] is None else item[1])
        for ticket, ended in order:
            excess -= entry.tokens.get(ticket, 0)
            if excess <= 0:
                return min(now if ended is None else ended, now) + deployment.rate_window_s - now
        return deployment.rate_window_s  # (the planner never lets a call bigger than tpm this far)

    async def release(
        self,
        deployment: Deployment,
        admission: Admission,
        outcome: CallOutcome,
        latency_ms: float | None,
        tokens: int | None,
        *,
        answered: bool = True,
        server_s: float | None = None,
        give_back: SpendHold | None = None,
    ) -> None:
        if admission.ticket is None:
            return
        if give_back is not None:  # first: nothing below waits, so the slot is freed in the same step
            await give_back.guard.release(give_back.attempt_no)
        now = self._clock.now()
        entry = self._entry(deployment.id)
        entry.in_flight.pop(admission.ticket, None)
        if admission.ticket in entry.requests:  # from now on it leaves the window like any ended call
            latency_s = None if latency_ms is None else latency_ms / 1000
            entry.requests[admission.ticket] = counted_until(
                now,
                latency_s,
                answered=answered,
                margin_s=self._arrival_margin_s,
                server_s=server_s if self._trust_processing_time else None,
            )
        if tokens is not None and admission.ticket in entry.tokens:
            entry.tokens[admission.ticket] = tokens
        entry.calls += 1
        if outcome is CallOutcome.NEUTRAL:
            return
        ok = outcome is CallOutcome.SUCCESS
        entry.success_rate += self._alpha * ((1.0 if ok else 0.0) - entry.success_rate)
        if ok and latency_ms is not None:
            prev = entry.latency_ewma_ms
            entry.latency_ewma_ms = latency_ms if prev is None else prev + self._alpha * (latency_ms - prev)
        self._prune(entry, deployment.rate_window_s, now)
        circuit = self._circuit(entry, now)
        if admission.probe and circuit is CircuitState.HALF_OPEN:
            entry.opened_at = None if ok else now
            entry.outcomes.clear()
            return
        entry.outcomes.append((now, ok))
        if not ok and circuit is CircuitState.CLOSED and entry.forced is None and self._tripped(entry):
            entry.opened_at = now
            entry.outcomes.clear()

    def _tripped(self, entry: _Entry) -> bool:
        failures = sum(1 for _, ok in entry.outcomes if not ok)
        ratio = failures / len(entry.outcomes)
        return failures >= self.breaker.failure_threshold and ratio >= self.breaker.min_failure_ratio

    async def force(self, deployment_id: str, state: Forced | None) -> None:
        entry = self._entry(deployment_id)
        entry.forced = state
        if state is not None:  # an override starts the breaker afresh once cleared
            entry.opened_at = None
            entry.outcomes.clear()

    async def next_rotation(self, key: str) -> int:
        return next(self._rotations.setdefault(key, count()))
