"""How one simulated deployment behaves (`SimProfile`), and the state and stats of applying it."""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RECORDED_REQUESTS", "DeploymentState", "Fault", "SimCounters", "SimProfile", "synth_text"]

Fault = Literal[
    "ok", "rate_limit", "server_error", "timeout", "malformed", "drop", "context_length", "invalid_json"
]
"""The outcome the sim chooses for one request, before the rpm window and latency apply."""

RECORDED_REQUESTS = 100
"""How many request bodies `SimCounters.recorded` keeps per deployment by default (the latest)."""

Rate = Annotated[float, Field(ge=0.0, le=1.0)]

# Leaves room for float rounding when rates such as 0.1 + 0.2 + 0.7 are summed.
_RATE_SUM_SLACK = 1e-9
_ADMITTED_AT_CAP = 100_000
_FALLBACK_WORDS = ("this", "is", "a", "simulated", "answer", "with", "no", "model", "behind", "it")


def synth_text(deployment: str, words: tuple[str, ...], tokens: int, *, choice: int = 0) -> str:
    """Build a deterministic answer of exactly `tokens` tokens by `router_core.tokens.estimate_tokens`.

    The text is `[simulated {deployment}] ` followed by the prompt's words, cut and padded with
    dots to exactly `4 * tokens` characters; a tiny budget may truncate even the prefix. Choice
    `i > 0` of an `n > 1` request starts with `[i] ` instead, so the first 4 characters of every
    choice differ.

    Args:
        deployment: Deployment id shown in the prefix.
        words: Words to repeat; a canned sentence is used when empty.
        tokens: Desired token count (>= 1).
        choice: Index of the choice among the request's `n`.

    Returns:
        The answer text.
    """
    target = 4 * tokens
    vocab = words or _FALLBACK_WORDS
    pieces = [f"[simulated {deployment}] " if choice == 0 else f"[{choice}] [simulated {deployment}] "]
    length = len(pieces[0])
    index = 0
    while length < target:
        word = vocab[index % len(vocab)]
        pieces.append(word + " ")
        length += len(word) + 1
        index += 1
    text = "".join(pieces)[: target - 1].rstrip()
    return text + "." * (target - len(text))


class SimProfile(BaseModel):
    """Behaviour of one simulated deployment.

    Fault rates are probabilities for a single request and are drawn from one uniform number, so
    they are mutually exclusive and their sum may not exceed 1. `script` overrides them for the
    first requests. The model is frozen so a profile can be shared by several deployments; change a
    deployment's behaviour with `SimWorld.set_profile`.

    Attributes:
        latency_ms: Mean time before an admitted request is answered.
        latency_jitter_ms: Uniform jitter around `latency_ms`; the latency never goes below 0.
        error_rate: Probability of a 500 server error.
        rate_limit_rate: Probability of a 429 that is not caused by the rpm window.
        timeout_rate: Probability of hanging `hang_s` seconds before answering normally.
        malformed_rate: Probability of a 200 whose body is truncated JSON.
        invalid_json_rate: Probability that a request asking for a JSON answer (OpenAI
            `response_format` json_object / json_schema, Anthropic `output_config.format`) gets a 200
            whose answer text is its JSON cut in half, so it does not parse. Requests that asked for
            no JSON, or are answered with a tool call, are answered normally (counted as "ok").
        drop_rate: Probability of dropping the connection without a response.
        rpm: Requests admitted per `window_s` sliding window; None means unlimited.
        window_s: Length of the rpm window in seconds (60 for real "per minute" limits).
        retry_after_s: Retry-After sent with random or scripted 429s; None sends no header.
        hang_s: How long a `timeout` fault hangs, measured with the world's clock.
        stream_interval_ms: Pause between the frames of a streamed answer, as a provider generating
            tokens would take (the world's clock).
        context_window: Largest prompt, in estimated tokens, the deployment accepts.
        output_tokens: Completion length in tokens, before the request's max_tokens cap.
        script: Outcomes of the first `len(script)` requests, in order.
        seed: Seed of the deployment's random generator; None draws fresh entropy.
        judged_quality: What a simulated judge makes of this deployment's answers
            (`router_core.sim.judge`); None means its catalog `quality` (the provider factory fills
            it in), or `judge.UNKNOWN_QUALITY` in a world built without a catalog.
        judge: Answer judge requests (the `router_core.judging` format) with a deterministic
            verdict `{"score", "reason"}` instead of the usual synthesized text; other requests
            are answered as usual, so the deployment can serve ordinary traffic too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0.0)
    latency_jitter_ms: float = Field(default=0.0, ge=0.0)
    error_rate: Rate = 0.0
    rate_limit_rate: Rate = 0.0
    timeout_rate: Rate = 0.0
    malformed_rate: Rate = 0.0
    drop_rate: Rate = 0.0
    invalid_json_rate: Rate = 0.0
    rpm: int | None = Field(default=None, ge=1)
    window_s: float = Field(default=60.0, gt=0.0)
    retry_after_s: float | None = Field(default=1.0, ge=0.0)
    hang_s: float = Field(default=600.0, ge=0.0)
    stream_interval_ms: float = Field(default=0.0, ge=0.0)
    context_window: int = Field(default=128_000, ge=1)
    output_tokens: int = Field(default=64, ge=1)
    script: list[Fault] = Field(default_factory=list)
    seed: int | None = None
    judged_quality: Rate | None = None
    judge: bool = False

    @model_validator(mode="after")
    def _rates_fit_one_draw(self) -> Self:
        total = sum(self.fault_weights().values())
        if total > 1.0 + _RATE_SUM_SLACK:
            raise ValueError(f"fault rates must sum to at most 1, got {total:g}")
        return self

    def fault_weights(self) -> dict[Fault, float]:
        """Map each random fault to its probability, in the order the sim draws them.

        Returns:
            The non-"ok" faults that random draws can produce, with their rates.
        """
        return {
            "rate_limit": self.rate_limit_rate,
            "server_error": self.error_rate,
            "timeout": self.timeout_rate,
            "malformed": self.malformed_rate,
            "drop": self.drop_rate,
            "invalid_json": self.invalid_json_rate,
        }


@dataclass
class SimCounters:
    """What one deployment has seen, for tests and benchmarks.

    Attributes:
        requests: Every request received for the deployment, valid or not.
        admitted: Requests that passed validation, refusals and the rpm window.
        by_outcome: Count per outcome: a `Fault`, or `bad_request` / `rpm_limited`.
        admitted_at: Clock times of admitted requests (the most recent 100k).
        recorded: The JSON bodies of the latest requests (every body that parsed as a JSON object,
            rejected ones included), oldest first, bounded by the deque's `maxlen`
            (`RECORDED_REQUESTS` unless the world says otherwise). Kept as parsed, not copied: treat
            them as read-only. Not part of `to_json` (bodies can be megabytes); `GET
            /_sim/requests/{deployment}` serves them.
    """

    requests: int = 0
    admitted: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    admitted_at: list[float] = field(default_factory=list)
    recorded: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECORDED_REQUESTS))

    def record_admission(self, now: float) -> None:
        """Count an admitted request at clock time `now`."""
        self.admitted += 1
        self.admitted_at.append(now)
        if len(self.admitted_at) > _ADMITTED_AT_CAP:
            # Trim in batches so appending stays amortised O(1) at the cap.
            del self.admitted_at[: len(self.admitted_at) - _ADMITTED_AT_CAP + _ADMITTED_AT_CAP // 10]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready view, as served by `GET /_sim/stats`."""
        return {
            "requests": self.requests,
            "admitted": self.admitted,
            "by_outcome": dict(self.by_outcome),
            "admitted_at": list(self.admitted_at),
        }


class DeploymentState:
    """How a profile plays out over time: its random stream, script position and rpm window.

    Attributes:
        profile: The behaviour being applied.
        rng: The deployment's random generator, seeded from `profile.seed`.
        script_pos: How many scripted outcomes were used.
        window: Clock times of the requests admitted in the current rpm window.
    """

    def __init__(self, profile: SimProfile, window: deque[float] | None = None) -> None:
        """Start applying `profile`, keeping an existing rpm `window` if given."""
        self.profile = profile
        self.rng = random.Random(profile.seed)
        self.script_pos = 0
        self.window: deque[float] = window if window is not None else deque()

    def next_fault(self) -> Fault:
        """The next scripted outcome, or a random one once the script is used up."""
        if self.script_pos < len(self.profile.script):
            self.script_pos += 1
            return self.profile.script[self.script_pos - 1]
        draw = self.rng.random()
        for fault, rate in self.profile.fault_weights().items():
            if draw < rate:
                return fault
            draw -= rate
        return "ok"

    def try_admit(self, now: float) -> float | None:
        """Admit into the rpm window and return None, or return seconds until a slot frees."""
        limit, span = self.profile.rpm, self.profile.window_s
        if limit is None:
            # Unlimited: skip the bookkeeping (a later rpm starts from an empty window).
            self.window.clear()
            return None
        while self.window and self.window[0] <= now - span:
            self.window.popleft()
        if len(self.window) >= limit:
            # A lowered rpm can leave more than `limit` entries; the one at -limit must go first.
            return self.window[-limit] + span - now
        self.window.append(now)
        return None

    def latency_s(self) -> float:
        """Draw the latency of one admitted request, in seconds."""
        jitter = self.profile.latency_jitter_ms
        offset = self.rng.uniform(-jitter, jitter) if jitter > 0 else 0.0
        return max(0.0, self.profile.latency_ms + offset) / 1000.0
