"""Router settings, read once at process start from `ROUTEQ_*` environment variables or `.env`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from router_core.fleet import BreakerPolicy

__all__ = ["RouterSettings", "SimulateMode"]


class SimulateMode(StrEnum):
    """When deployments are served by the simulated provider world instead of the real API."""

    AUTO = "auto"  # when the deployment's API key variable is unset or empty (and for kind "sim")
    ALWAYS = "always"  # every deployment: tests, demos, benchmarks
    NEVER = "never"  # only kind "sim"; a missing key is then an authentication error at call time


class RouterSettings(BaseSettings):
    """How the router loads its catalog, retries and times out."""

    model_config = SettingsConfigDict(env_prefix="ROUTEQ_", env_file=".env", extra="ignore")

    catalog_path: Path | None = Field(default=None, description="Catalog TOML; unset = built-in demo.")
    simulate: SimulateMode = SimulateMode.AUTO
    sim_url: str | None = Field(
        default=None, description="A running `routeq sim` server to use instead of the in-process one."
    )
    max_candidates: int = Field(default=5, ge=1)
    default_completion_tokens: int = Field(default=512, gt=0)
    default_timeout_ms: float = Field(default=60_000, gt=0)
    max_attempts_per_deployment: int = Field(default=3, ge=1)
    max_attempts_total: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=20.0, ge=0)
    max_retry_after_s: float = Field(
        default=60.0, ge=0, description="A longer Retry-After fails over instead of waiting."
    )
    breaker_failures: int = Field(default=5, ge=1, description="Failures in the window that open a circuit.")
    breaker_window_s: float = Field(default=30.0, gt=0)
    breaker_min_failure_ratio: float = Field(
        default=0.5, ge=0, le=1, description="...and at least this share of the window's calls failed."
    )
    breaker_cooldown_s: float = Field(default=30.0, gt=0, description="Open this long, then probe.")
    breaker_probes: int = Field(default=1, ge=1, description="Calls let through at once while half-open.")
    budget_prompt_margin: float = Field(
        default=1.25, ge=1, description="Budget holds count the prompt as this many times our estimate."
    )

    def breaker_policy(self) -> BreakerPolicy:
        return BreakerPolicy(
            failure_threshold=self.breaker_failures,
            window_s=self.breaker_window_s,
            min_failure_ratio=self.breaker_min_failure_ratio,
            cooldown_s=self.breaker_cooldown_s,
            probes=self.breaker_probes,
        )

    @field_validator("catalog_path", "sim_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `ROUTEQ_CATALOG_PATH=` in a shell or .env means "not set", not "the current directory".
        return None if isinstance(value, str) and not value.strip() else value
