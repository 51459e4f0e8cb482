"""The router: plan a request, then walk the plan calling providers until one succeeds.

`complete` returns the whole answer; `stream` yields text as it arrives and then the result. Both
share one walk over the plan: for a stream, "success" means the first piece of text arrived, after
which the router is committed to that deployment.

Before each call the router asks the `FleetState` to admit it (breaker, concurrency, rpm/tpm) with
its worst-case cost held by the caller's `SpendGuard` (if any): both in one step, or neither (a
Redis fleet checks and takes both in one script). A refused candidate is
skipped; when every candidate refuses for capacity, `CapacityExhaustedError` says when to try
again, and when only the budget refused, `BudgetExceededError` names the cap.

Per candidate, retryable errors (429, 5xx, timeout, connection, malformed body) are retried with
exponential backoff and full jitter, never sooner than the provider's Retry-After; a Retry-After
longer than `max_retry_after_s` fails over instead. Non-retryable errors (400, auth) fail over at
once; a context-length error skips every candidate whose context window is not larger.

`embed` calls one embedding deployment with the same retry rule (`router_core.embedder`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from router_core import deployment_set
from router_core.attempts import attempt_outcome, check_output, failed_attempt, health_outcome
from router_core.catalog import Catalog, Deployment, load_catalog
from router_core.chat import Feature
from router_core.clock import Clock, SystemClock
from router_core.deployment_set import DeploymentSet, ProviderFactory, provider_factory, swapped
from router_core.embedder import embed_texts
from router_core.errors import (
    AllAttemptsFailedError,
    BudgetExceededError,
    CapacityExhaustedError,
    ContextLengthError,
    InvalidOutputError,
    InvalidRequestError,
    ProviderError,
    ProviderTimeoutError,
    StreamInterruptedError,
)
from router_core.fanout import fan_out
from router_core.fleet import (
    CONCURRENCY_RETRY_S,
    Admission,
    CallOutcome,
    FleetState,
    InMemoryFleetState,
    Refusal,
    SpendHold,
)
from router_core.models import (
    Attempt,
    ChatRequest,
    CompletionResult,
    Embeddings,
    Plan,
    Strategy,
    Usage,
)
from router_core.planner import PlanLimits, build_plan, call_tokens
from router_core.providers.base import Delta, Provider, ProviderReply, StreamPart
from router_core.providers.factory import build_providers
from router_core.quality import QualitySource, StaticQuality
from router_core.retry import RetryPolicy, backoff
from router_core.settings import RouterSettings
from router_core.sim import SimWorld
from router_core.spend import SpendGuard
from router_core.tokens import estimate_tokens

__all__ = ["RetryPolicy", "Router"]

logger = logging.getLogger("routeq.router")

T = TypeVar("T")
# One provider operation: (provider, max_tokens, timeout_s) -> value. Raises ProviderError.
Operation = Callable[[Provider, int, float], Awaitable[T]]


@dataclass(frozen=True, slots=True)
class _OpenStream:
    """A stream whose first part has arrived: the deployment is chosen."""

    first: StreamPart
    rest: AsyncGenerator[StreamPart, None]


# How long a job whose budget is held by calls in flight waits before trying again.
_BUDGET_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class _Refused:
    """A candidate that was not called: over budget, or refused admission for now."""

    detail: str
    budget: bool
    retry_after_s: float | None = None
    spread_s: float = 0.0


@dataclass(slots=True)
class _Walk:
    """What one request's walk over its plan has done so far."""

    request: ChatRequest
    plan: Plan
    guard: SpendGuard | None
    attempts: list[Attempt]
    refused: list[_Refused]
    deployments: DeploymentSet  # as the walk began: a catalog swap meanwhile does not reprice its calls
    waiter: str | None = None  # the job asking, for the fleet's waiting line (FleetState.admit)

    @property
    def max_tokens(self) -> int:
        """The completion cap sent with every call: the request's, else the plan's default."""
        return self.request.max_tokens or self.plan.completion_tokens_estimate


class Router:
    """Routes chat requests over a catalog of deployments.

    Build with `Router.from_settings(...)` (loads the catalog, builds SDK clients) or pass the parts
    in; use as `async with router:` or call `aclose()` to close every HTTP client.
    """

    def __init__(
        self,
        catalog: Catalog,
        providers: dict[str, Provider],
        *,
        fleet: FleetState | None = None,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        limits: PlanLimits | None = None,
        rng: random.Random | None = None,
        sim_world: SimWorld | None = None,
        prompt_margin: float = 1.25,
        quality: QualitySource | None = None,
        provider_factory: ProviderFactory | None = None,
    ) -> None:
        missing = set(catalog) - set(providers)
        if missing:
            raise ValueError(f"no provider for deployments {sorted(missing)}")
        self.catalog = catalog  # what new requests are planned over; `use_catalog` swaps both
        self.providers = providers
        self._provider_factory = provider_factory  # adapters for what a new catalog adds or changes
        self.policy = policy or RetryPolicy()
        self._retired = deployment_set.RetiredAdapters(self.policy.longest_walk_s)
        self.clock = clock or SystemClock()
        self.fleet: FleetState = fleet or InMemoryFleetState(clock=self.clock)
        self.limits = limits or PlanLimits()
        self.sim_world = sim_world
        # Budget holds assume the provider counts at most this many times our prompt estimate.
        self.prompt_margin = prompt_margin
        # Learned quality scores (SQL, cached fleet-wide by storage); the catalog's priors without.
        self.quality: QualitySource = quality or StaticQuality()
        self._rng = rng or random.Random()

    @classmethod
    def from_settings(
        cls,
        settings: RouterSettings | None = None,
        *,
        catalog: Catalog | None = None,
        fleet: FleetState | None = None,
        clock: Clock | None = None,
        sim_world: SimWorld | None = None,
        rng: random.Random | None = None,
        quality: QualitySource | None = None,
    ) -> Router:
        """Load the catalog (unless given) and build one SDK client per deployment."""
        settings = settings or RouterSettings()
        catalog = catalog or load_catalog(settings.catalog_path)
        providers, world = build_providers(
            catalog, simulate=settings.simulate, sim_world=sim_world, sim_url=settings.sim_url
        )
        clock = clock or SystemClock()
        return cls(
            catalog,
            providers,
            fleet=fleet or InMemoryFleetState(clock=clock, breaker=settings.breaker_policy()),
            clock=clock,
            policy=RetryPolicy.from_settings(settings),
            limits=PlanLimits(settings.default_completion_tokens, settings.max_candidates),
            rng=rng,
            sim_world=world,
            prompt_margin=settings.budget_prompt_margin,
            quality=quality,
            provider_factory=provider_factory(settings, world),
        )

    def use_catalog(self, catalog: Catalog) -> None:
        """Plan over `catalog` from now on; walks under way keep theirs, calling none it removes/disables."""
        current = DeploymentSet(self.catalog, self.providers)
        using, retired = swapped(current, catalog, self._provider_factory, self.sim_world)
        self.catalog, self.providers = using.catalog, using.providers
        self._retired.retire(retired, self.clock.now())

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.gather(self._retired.aclose(), *(p.aclose() for p in self.providers.values()))

    async def plan(self, request: ChatRequest) -> Plan:
        """Ordered candidates and exclusions for `request`, from live stats."""
        catalog = self.catalog  # one catalog for the whole plan, even if a swap comes meanwhile
        snapshot = await self.fleet.snapshot(list(catalog))
        rotation = 0
        if request.preferences.uses(Strategy.ROUND_ROBIN):
            rotation = await self.fleet.next_rotation("default")
        board = await self.quality.board()
        return build_plan(request, catalog, snapshot, rotation=rotation, limits=self.limits, quality=board)

    async def complete(
        self,
        request: ChatRequest,
        *,
        plan: Plan | None = None,
        guard: SpendGuard | None = None,
        waiter: str | None = None,
    ) -> CompletionResult:
        """Route `request` and return the first successful completion.

        `waiter` names the job asking to the fleet state's admission (its place in a waiting line).

        Raises:
            NoRouteError: no deployment satisfies the constraints.
            BudgetExceededError: `guard` has no room for any candidate's worst-case cost.
            CapacityExhaustedError: every candidate is full for now; `.retry_after_s` says how long.
            AllAttemptsFailedError: every attempt failed; `.attempts` has each one.
        """
        plan = plan or await self.plan(request)
        started = self.clock.now()
        walk = _Walk(request, plan, guard, [], [], DeploymentSet(self.catalog, self.providers), waiter)

        async def call(provider: Provider, max_tokens: int, timeout_s: float) -> ProviderReply:
            if request.choices > 1 and Feature.N not in provider.deployment.features:
                reply = await fan_out(provider, request, max_tokens, timeout_s)
            else:
                reply = await provider.complete(request, max_tokens=max_tokens, timeout_s=timeout_s)
            check_output(request, provider.deployment.id, reply)
            return reply

        dep, reply = await self._walk(walk, call)
        self._settle(dep, reply, walk)
        return self._result(dep, reply, walk.attempts, plan, started)

    async def stream(
        self,
        request: ChatRequest,
        *,
        plan: Plan | None = None,
        guard: SpendGuard | None = None,
        waiter: str | None = None,
    ) -> AsyncGenerator[str | Delta | CompletionResult, None]:
        """Route `request` as a stream: text pieces and `Delta`s as they arrive, then the result.

        A streamed answer that breaks the requested JSON schema cannot be taken back either: the
        stream ends with `StreamInterruptedError` naming the problem (and the call is billed).

        Failures before the first piece are retried and failed over like `complete`; a failure
        after it raises `StreamInterruptedError` (the text already sent cannot be taken back).
        Each piece must arrive within the attempt's timeout of the previous one.

        Raises:
            InvalidRequestError: `n` > 1 (several answers are not streamed; ask with `complete`).
        """
        if request.choices > 1:
            raise InvalidRequestError("n > 1 cannot be streamed: ask without stream, or with n=1", field="n")
        plan = plan or await self.plan(request)
        started = self.clock.now()
        walk = _Walk(request, plan, guard, [], [], DeploymentSet(self.catalog, self.providers), waiter)
        attempts = walk.attempts

        async def open_stream(provider: Provider, max_tokens: int, timeout_s: float) -> _OpenStream:
            parts = provider.stream(request, max_tokens=max_tokens, timeout_s=timeout_s)
            try:
                return _OpenStream(await anext(parts), parts)
            except BaseException:
                await parts.aclose()
                raise

        dep, opened = await self._walk(walk, open_stream)
        timeout_s = self._timeout_s(request)
        part: StreamPart = opened.first
        relayed: list[str] = []
        try:
            while not isinstance(part, ProviderReply):
                relayed.append(part if isinstance(part, str) else part.text)
                yield part
                try:
                    async with asyncio.timeout(timeout_s):
                        part = await anext(opened.rest)
                except TimeoutError:
                    raise ProviderTimeoutError(
                        f"{dep.id} stopped streaming for {timeout_s * 1000:.0f} ms", deployment=dep.id
                    ) from None
                except StopAsyncIteration:
                    raise ProviderError(
                        f"{dep.id} ended the stream without a final message", deployment=dep.id
                    ) from None
        except ProviderError as exc:
            charge = self._partial_charge(dep, walk, "".join(relayed))
            attempts[-1] = failed_attempt(attempts[-1], exc, **charge)
            raise StreamInterruptedError(f"the stream from {dep.id} broke off: {exc}", attempts) from exc
        finally:
            await opened.rest.aclose()
        self._settle(dep, part, walk)
        try:
            check_output(request, dep.id, part)
        except InvalidOutputError as exc:
            attempts[-1] = failed_attempt(attempts[-1], exc)
            raise StreamInterruptedError(f"the stream from {dep.id} ended invalid: {exc}", attempts) from exc
        yield self._result(dep, part, attempts, plan, started)

    async def embed(self, texts: Sequence[str], *, deployment: str | None = None) -> Embeddings:
        """Embed `texts` (one vector each, in order) on the embedding deployment `deployment`,
        else the catalog's first one; retried as `router_core.embedder` says.

        Raises:
            ConfigError: the catalog has no embedding deployment, or `deployment` is not one.
            InvalidRequestError: no texts, or an empty one.
            AllAttemptsFailedError: the deployment kept failing; `.attempts` has each attempt.
        """
        dep = self.catalog.embedder(deployment)
        return await embed_texts(
            self.providers[dep.id],
            self.catalog.price(dep.id),
            list(texts),
            clock=self.clock,
            policy=self.policy,
            rng=self._rng,
        )

    async def _walk(self, walk: _Walk, op: Operation[T]) -> tuple[Deployment, T]:
        """Run `op` over the plan's candidates with retries and failover; the first success wins."""
        context_floor = 0  # after a context-length error, only larger windows are worth trying
        for candidate in walk.plan.candidates:
            dep = walk.deployments.catalog.get(candidate.deployment)
            live = self.catalog.get(candidate.deployment)  # removed or disabled since: never called again
            if dep is None or live is None or not live.enabled or dep.context_window <= context_floor:
                continue
            value, error = await self._try_deployment(dep, walk, op)
            if value is not None:
                return dep, value
            if isinstance(error, ContextLengthError):
                context_floor = dep.context_window
            if len(walk.attempts) >= self.policy.max_attempts_total:
                break
        raise self._no_success(walk)

    def _no_success(self, walk: _Walk) -> AllAttemptsFailedError:
        attempts = walk.attempts
        tried = ", ".join(dict.fromkeys(a.deployment for a in attempts)) or "none"
        last = attempts[-1].error if attempts else "no candidate was left to try"
        summary = f"{len(attempts)} attempts failed (deployments tried: {tried}; last error: {last})"
        capacity = [r for r in walk.refused if not r.budget]
        if capacity:
            retry_after = min((r.retry_after_s for r in capacity if r.retry_after_s), default=None)
            retry_after = retry_after or CONCURRENCY_RETRY_S
            details = "; ".join(r.detail for r in capacity)
            return CapacityExhaustedError(
                f"every candidate is full for now ({details}); {summary}. Try again in {retry_after:.2f}s.",
                attempts,
                retry_after,
                spread_s=max(r.spread_s for r in capacity),
            )
        budget = [r.detail for r in walk.refused if r.budget]
        if budget:
            return BudgetExceededError(
                f"budget exceeded: {'; '.join(dict.fromkeys(budget))}. {summary}", attempts, budget
            )
        return AllAttemptsFailedError(
            f"all {summary}. Each attempt's error is in .attempts; relax constraints or raise "
            "max_candidates to try more.",
            attempts,
        )

    async def _try_deployment(
        self, dep: Deployment, walk: _Walk, op: Operation[T]
    ) -> tuple[T | None, ProviderError | None]:
        """Up to `max_attempts_per_deployment` calls to one deployment, with backoff between them."""
        wait = 0.0
        error: ProviderError | None = None
        attempts = walk.attempts
        for n in range(self.policy.max_attempts_per_deployment):
            if len(attempts) >= self.policy.max_attempts_total:
                break
            if wait:
                await self.clock.sleep(wait)
            attempt_no = len(attempts) + 1
            try:
                admitted = await self._admit(dep, walk)
                if admitted is None:
                    return None, None
                value, error, attempt = await self._call(dep, walk, wait, op, *admitted)
            except asyncio.CancelledError:
                # We abandoned the call (shutdown, job timeout): like a timeout, it is not billed.
                # Only a worker killed outright leaves its hold for a re-run to charge.
                if walk.guard is not None:  # shielded: a second cancel must not leave the hold
                    await asyncio.shield(walk.guard.release(attempt_no))
                raise
            attempts.append(attempt)
            if value is not None:
                return value, None
            assert error is not None  # not billed: its hold was given back with its slot (`_call`)
            if not error.retryable or n + 1 == self.policy.max_attempts_per_deployment:
                break
            wait = self._backoff(n, error.retry_after)
            if wait > self.policy.max_retry_after_s:
                logger.info(
                    "%s asks to wait %.1fs; failing over instead", dep.id, wait, extra={"deployment": dep.id}
                )
                break
        return None, error

    async def _admit(self, dep: Deployment, walk: _Walk) -> tuple[Admission, SpendHold | None] | None:
        """Take a place in the deployment's limits and hold the worst-case cost, both or neither (one
        step: `FleetState.admit` with the hold): the admission and the hold; None if refused."""
        prompt, max_tokens = call_tokens(dep, walk.request, walk.plan.prompt_tokens_estimate, walk.max_tokens)
        hold = None
        if walk.guard is not None:
            price = walk.deployments.catalog.price(dep.id)
            worst = price.estimate(math.ceil(prompt * self.prompt_margin), max_tokens)
            hold = SpendHold(walk.guard, len(walk.attempts) + 1, dep.id, worst)
        admission = await self.fleet.admit(dep, prompt + max_tokens, waiter=walk.waiter, hold=hold)
        if admission.spend_refusal is not None:
            # Room held by calls in flight may come back when they settle: wait, like for a full
            # rate window. Room already spent will not: that is a budget refusal.
            refusal = admission.spend_refusal
            walk.refused.append(
                _Refused(refusal, budget=not refusal.wait, retry_after_s=_BUDGET_WAIT_S, spread_s=1.0)
            )
            return None
        if admission.admitted:
            return admission, hold
        rate_limited = admission.refusal in (Refusal.RPM, Refusal.TPM)
        spread = dep.rate_window_s if rate_limited else CONCURRENCY_RETRY_S
        walk.refused.append(_Refused(admission.describe(dep.id), False, admission.retry_after_s, spread))
        logger.debug("skipping %s", admission.describe(dep.id), extra={"deployment": dep.id})
        return None

    def _backoff(self, retry_number: int, retry_after: float | None) -> float:
        return backoff(self.policy, self._rng, retry_number, retry_after)

    def _timeout_s(self, request: ChatRequest) -> float:
        return (request.preferences.timeout_ms or 0) / 1000 or self.policy.default_timeout_s

    async def _call(  # noqa: PLR0917 - the attempt's parts, as `_try_deployment` has them
        self,
        dep: Deployment,
        walk: _Walk,
        wait: float,
        op: Operation[T],
        admission: Admission,
        hold: SpendHold | None,
    ) -> tuple[T | None, ProviderError | None, Attempt]:
        """One admitted attempt, timed and released to the live stats (with its hold, when the
        provider did not bill it). `_settle` fills usage and cost."""
        timeout_s = self._timeout_s(walk.request)
        t0 = self.clock.now()
        value: T | None = None
        error: ProviderError | None = None
        try:
            async with asyncio.timeout(timeout_s):
                value = await op(walk.deployments.providers[dep.id], walk.max_tokens, timeout_s)
        except TimeoutError:
            message = f"{dep.id} did not answer within {timeout_s * 1000:.0f} ms (timeout_ms)"
            error = ProviderTimeoutError(message, deployment=dep.id)
        except ProviderError as exc:
            error = exc
        finally:
            # Also on cancellation, so the in-flight count never leaks.
            latency_ms = (self.clock.now() - t0) * 1000
            ok = value is not None
            outcome = CallOutcome.SUCCESS if ok else health_outcome(error) if error else CallOutcome.NEUTRAL
            usage = value.usage if isinstance(value, ProviderReply) else error.billed if error else None
            tokens = usage.input_tokens + usage.output_tokens if usage else None
            # A reply (or an error status) proves the call reached the provider before now, and
            # before now less the time the provider says it held it (a reply's `server_s`).
            answered = ok or (error is not None and error.status_code is not None)
            server_s = value.server_s if isinstance(value, ProviderReply) else None
            # A call the provider did not bill gives its hold back at once, with its slot. (One
            # cancelled has no error: `_try_deployment` gives its hold back.)
            give_back = hold if error is not None and error.billed is None else None
            release = self.fleet.release(
                dep,
                admission,
                outcome,
                latency_ms,
                tokens,
                answered=answered,
                server_s=server_s,
                give_back=give_back,
            )
            await asyncio.shield(release)
        if error is not None:
            logger.debug("attempt on %s failed: %s", dep.id, error, extra={"deployment": dep.id})
        attempt = Attempt(
            deployment=dep.id,
            provider=dep.provider,
            model=dep.model,
            outcome=attempt_outcome(error),
            error_class=type(error).__name__ if error else None,
            error=str(error) if error else None,
            status_code=error.status_code if error else None,
            latency_ms=latency_ms,
            wait_ms=wait * 1000,
        )
        if error is not None and error.billed is not None:
            cost = walk.deployments.catalog.price(dep.id).cost(error.billed)
            attempt = attempt.model_copy(update={"usage": error.billed, "cost_usd": cost})
        return value, error, attempt

    def _partial_charge(self, dep: Deployment, walk: _Walk, text: str) -> dict[str, Any]:
        """Usage and cost of a stream that broke off after `text`: the provider bills what it sent.

        A broken stream brings no usage report, so it is estimated: the prompt as planned and the
        text relayed, never more output than the call's `max_tokens`, so the charge stays within
        the call's budget hold (the worst case of the same prompt and `max_tokens`).
        """
        output = min(estimate_tokens(text), walk.max_tokens)
        usage = Usage(input_tokens=walk.plan.prompt_tokens_estimate, output_tokens=output)
        price = walk.deployments.catalog.price(dep.id)
        return {"usage": usage, "cost_usd": price.cost(usage), "estimated": True}

    def _settle(self, dep: Deployment, reply: ProviderReply, walk: _Walk) -> None:
        """Record the successful attempt's usage and billed cost."""
        walk.attempts[-1] = walk.attempts[-1].model_copy(
            update={
                "usage": reply.usage,
                "cost_usd": walk.deployments.catalog.price(dep.id).cost(reply.usage),
                "simulated": reply.simulated,
            }
        )

    def _result(
        self, dep: Deployment, reply: ProviderReply, attempts: list[Attempt], plan: Plan, started: float
    ) -> CompletionResult:
        return CompletionResult(
            content=reply.content,
            finish_reason=reply.finish_reason,
            choices=list(reply.choices),
            deployment=dep.id,
            provider=dep.provider,
            model=reply.model,
            usage=reply.usage,
            cost_usd=attempts[-1].cost_usd,
            latency_ms=(self.clock.now() - started) * 1000,
            simulated=reply.simulated,
            attempts=attempts,
            plan_strategy=plan.strategy,
        )
