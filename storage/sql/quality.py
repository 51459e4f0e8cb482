"""Quality evidence in SQL: users' feedback, every score given to an answer, and their tallies.

    record      add scored answers (judge, reference, feedback), each once: the evidence row is
                unique per (source, ref), and only a row that went in adds to its tally, in the
                same transaction, so a redelivered evaluation or a retried POST counts nothing twice
    tallies     the sums per deployment x capability x complexity the learned scores come from
    feedback    a user's rating of a job's answer (stars or thumbs), stored as history and as evidence
    history     a tenant's feedback, newest first, paged

The learned score itself is computed from the tallies by `router_core.quality.QualityBoard`;
`storage.quality_board.FleetQuality` keeps the board cached fleet-wide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update

from router_core.errors import InvalidRequestError
from router_core.models import Capability, ChatRequest, Complexity
from router_core.quality import Evidence, Tally, evidence_for
from storage.errors import NotFoundError
from storage.jobs import JobStatus, TenantScope, aware, new_id
from storage.sql.database import Database, owned_by
from storage.sql.schema import feedback, jobs, quality_evidence, quality_tallies

__all__ = ["Feedback", "QualityEvidence", "ScoredAnswer", "Thumbs", "rating_score"]

Thumbs = Literal["up", "down"]
EvidenceSource = Literal["feedback", "judge", "reference"]

_T = quality_tallies.c
_F = feedback.c


@dataclass(frozen=True, slots=True)
class ScoredAnswer:
    """One score to record: what was scored (`source`, `ref`, unique together) and the evidence."""

    source: EvidenceSource
    ref: str
    evidence: Evidence
    tenant: str | None = None
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class Feedback:
    """A row of `feedback`."""

    id: str
    tenant: str
    user_id: str
    job_id: str
    deployment: str
    rating: int | None
    thumbs: Thumbs | None
    score: float
    category: str | None
    comment: str | None
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "feedback",
            "job_id": self.job_id,
            "user": self.user_id,
            "deployment": self.deployment,
            "rating": self.rating,
            "thumbs": self.thumbs,
            "score": self.score,
            "category": self.category,
            "comment": self.comment,
            "created_at": int(self.created_at.timestamp()),
        }


def rating_score(rating: int | None, thumbs: Thumbs | None) -> float:
    """A rating as quality evidence: 1-5 stars map to 0, 0.25 ... 1; thumbs up 1, down 0.

    Raises:
        InvalidRequestError: neither or both given, or stars outside 1-5 (names the field).
    """
    if (rating is None) == (thumbs is None):
        raise InvalidRequestError("give either 'rating' (1-5) or 'thumbs' ('up' or 'down')", field="rating")
    if rating is not None:
        if not 1 <= rating <= 5:
            raise InvalidRequestError(f"rating must be 1-5, got {rating}", field="rating")
        return (rating - 1) / 4
    if thumbs not in ("up", "down"):
        raise InvalidRequestError(f"thumbs must be 'up' or 'down', got {thumbs!r}", field="thumbs")
    return 1.0 if thumbs == "up" else 0.0


class QualityEvidence:
    """`store.quality`: scored answers, their tallies and users' feedback."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._new_evidence = db.insert_ignoring_duplicates(quality_evidence)
        self._new_tally = db.insert_ignoring_duplicates(quality_tallies)

    async def record(self, answers: Sequence[ScoredAnswer]) -> int:
        """Add each scored answer once; how many were new (the rest were recorded before)."""
        if not answers:
            return 0
        now = self._db.now()
        added = 0

        async def write(conn: Any) -> None:
            nonlocal added
            added = 0
            for answer in answers:
                added += await self._add(conn, answer, now)

        await self._db.writes.run(write)
        return added

    async def _add(self, conn: Any, answer: ScoredAnswer, now: datetime) -> int:
        """Insert the evidence row; if it went in, add it to its tally. 1 if new, else 0."""
        e = answer.evidence
        inserted = await conn.execute(
            self._new_evidence.values(
                source=answer.source,
                ref=answer.ref,
                deployment=e.deployment,
                capability=e.capability.value,
                complexity=e.complexity.value,
                score=e.score,
                tenant=answer.tenant,
                job_id=answer.job_id,
                created_at=now,
            )
        )
        if inserted.rowcount != 1:
            return 0
        key = {"deployment": e.deployment, "capability": e.capability.value, "complexity": e.complexity.value}
        await conn.execute(self._new_tally.values(**key, samples=0, total=0.0, updated_at=now))
        mine = (_T.deployment == e.deployment) & (_T.capability == key["capability"])
        mine &= _T.complexity == key["complexity"]
        await conn.execute(
            update(quality_tallies)
            .where(mine)
            .values(samples=_T.samples + 1, total=_T.total + e.score, updated_at=now)
        )
        return 1

    async def tallies(self) -> list[Tally]:
        """Every tally (a few rows per deployment)."""
        async with self._db.reading() as conn:
            rows = (await conn.execute(select(quality_tallies))).all()
        return [
            Tally(r.deployment, Capability(r.capability), Complexity(r.complexity), r.samples, r.total)
            for r in rows
        ]

    async def add_feedback(
        self,
        *,
        tenant: str,
        user_id: str,
        job_id: str,
        rating: int | None = None,
        thumbs: Thumbs | None = None,
        category: str | None = None,
        comment: str | None = None,
    ) -> Feedback:
        """Store a user's rating of a job's answer, and count it as evidence for its deployment.

        Raises:
            NotFoundError: no such job for this tenant (another tenant's job is not found either).
            InvalidRequestError: a bad rating, or a job with no provider answer to rate (not
                succeeded yet, or served from the cache: rate the job that made the answer).
        """
        score = rating_score(rating, thumbs)
        row = await self._rateable(job_id, tenant)
        request = ChatRequest.model_validate(row.request)
        made = Feedback(
            id=new_id("fb"),
            tenant=tenant,
            user_id=user_id,
            job_id=job_id,
            deployment=row.deployment,
            rating=rating,
            thumbs=thumbs,
            score=score,
            category=category,
            comment=comment,
            created_at=self._db.now(),
        )
        answer = ScoredAnswer(
            "feedback", made.id, evidence_for(request, row.deployment, score), tenant=tenant, job_id=job_id
        )

        async def write(conn: Any) -> None:
            await conn.execute(feedback.insert().values(**dataclasses.asdict(made)))
            await self._add(conn, answer, made.created_at)

        await self._db.writes.run(write)
        return made

    async def _rateable(self, job_id: str, tenant: str) -> Any:
        query = select(jobs.c.status, jobs.c.deployment, jobs.c.request, jobs.c.cache_source).where(
            (jobs.c.id == job_id) & owned_by(jobs.c.tenant, tenant)
        )
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError("job", job_id)
        if row.status != JobStatus.SUCCEEDED or row.deployment is None:
            raise InvalidRequestError(
                f"job {job_id!r} is {row.status}: only a succeeded job's answer can be rated", field="job_id"
            )
        if row.cache_source is not None:
            raise InvalidRequestError(
                f"job {job_id!r} was served from the cache: rate job {row.cache_source!r}, whose "
                "answer it is",
                field="job_id",
            )
        return row

    async def history(
        self, tenant: TenantScope, *, job_id: str | None = None, limit: int = 100, before: str | None = None
    ) -> list[Feedback]:
        """The tenant's feedback, newest first; `before` is the last id of the previous page."""
        query = select(feedback).where(owned_by(_F.tenant, tenant))
        if job_id is not None:
            query = query.where(_F.job_id == job_id)
        if before is not None:
            anchor = select(_F.created_at).where((_F.id == before) & owned_by(_F.tenant, tenant))
            after = anchor.scalar_subquery()
            query = query.where((_F.created_at < after) | ((_F.created_at == after) & (_F.id < before)))
        query = query.order_by(_F.created_at.desc(), _F.id.desc()).limit(limit)
        async with self._db.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [_feedback(r._mapping) for r in rows]


def _feedback(m: Any) -> Feedback:
    """A `feedback` row as its record (the dataclass's fields are the table's columns)."""
    return Feedback(**{**m, "created_at": aware(m["created_at"])})
