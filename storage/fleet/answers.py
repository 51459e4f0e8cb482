"""Paid answers written ahead of their SQL commit, so a failed commit never pays for the same job twice.

A run's outcome reaches SQL in one transaction (`Runs.finish`). When that write fails for a moment
(the database or Redis blinks) the job is retried by arq, and without a record of what the provider
already answered the retry would call, and be billed by, the provider again. So right after routing
the worker writes its outcome here:

    routeq:answer:<job_id>   hash: <run> -> {"result": CompletionResult | null, "attempts": [...],
                                            "failure": {"type", "message"} | null}

and deletes its field once the commit went through. The job's next run reads the hash first: each
answer left there is committed as the run that made it (same `(job_id, run, attempt_no)` keys as
the budget holds, so the holds settle at the real cost), and no provider is called. Answers of
concurrent duplicate runs are separate fields; the first one committed sets the result, as when the
runs commit themselves. A field nobody commits (the job was finished some other way) expires.

The write is best effort: if Redis itself fails at that moment the run goes on to its commit
(`AnswerStore.save` returns False) and a later failure is handled as before, through the holds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json
from redis.asyncio import Redis
from redis.exceptions import RedisError

from router_core.models import Attempt, CompletionResult
from storage import keys
from storage.bus.coalesce import BatchedScript, coalescer_for, ready
from storage.connections import as_text
from storage.jobs import JobFailure

__all__ = ["AnswerStore", "SavedAnswer"]

logger = logging.getLogger("routeq.worker")


@dataclass(frozen=True, slots=True)
class SavedAnswer:
    """A run's outcome as routing left it: the result or the failure, and every attempt it made."""

    run: int
    attempts: list[Attempt]
    result: CompletionResult | None = None
    failure: JobFailure | None = None

    def dumps(self) -> str:
        # pydantic-core writes the models' JSON itself, without Python dicts in between.
        failure = None if self.failure is None else self.failure.as_json()
        return to_json({"result": self.result, "attempts": self.attempts, "failure": failure}).decode()

    @classmethod
    def loads(cls, run: int, raw: str) -> SavedAnswer:
        data: dict[str, Any] = json.loads(raw)
        result = data.get("result")
        failure = data.get("failure")
        return cls(
            run=run,
            attempts=[Attempt.model_validate(a) for a in data.get("attempts", [])],
            result=None if result is None else CompletionResult.model_validate(result),
            failure=None if failure is None else JobFailure.from_json(failure),
        )


# KEYS: the job's answers. ARGV: run, answer (JSON), TTL in seconds. One call where HSET + EXPIRE
# were two commands in this turn's pipeline: a worker writes an answer ahead for every job.
_SAVE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class AnswerStore:
    """Reads and writes `routeq:answer:<job_id>` (one per worker process)."""

    def __init__(self, redis: Redis, *, ttl_s: int = keys.ANSWER_TTL_S) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._batch = coalescer_for(redis)
        self._save = BatchedScript(redis, _SAVE)

    async def save(self, job_id: str, answer: SavedAnswer) -> bool:
        """Record `answer` before its commit; False (logged) when Redis could not take it."""
        key = keys.job_answer(job_id)
        try:
            await self._save(keys=[key], args=[str(answer.run), answer.dumps(), self._ttl_s])
        except RedisError as exc:
            # Not fatal: the commit may well go through; only a failure after this one re-runs the call.
            logger.warning("job %s run %d: answer not written ahead (%s)", job_id, answer.run, exc)
            return False
        return True

    async def saved(self, job_id: str, *, other_than: int) -> list[SavedAnswer]:
        """Answers earlier (or concurrent) runs left uncommitted, oldest run first."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.job_answer(job_id))
            (raw,) = await pipe.execute()
        answers = [SavedAnswer.loads(int(as_text(run)), as_text(value)) for run, value in raw.items()]
        return sorted((a for a in answers if a.run != other_than), key=lambda a: a.run)

    def forget(self, job_id: str, runs: Sequence[int]) -> Awaitable[object]:
        """Drop the answers of `runs` once they are committed (never another run's); the command is
        queued when this is called (storage/bus/coalesce.py)."""
        if not runs:
            return ready(0)
        return self._batch.execute("HDEL", keys.job_answer(job_id), *map(str, runs))
