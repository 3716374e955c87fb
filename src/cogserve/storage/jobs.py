"""Async jobs in the metadata database: what was asked, who asked, where it stands, what came out.

A job is worked on by one process at a time, the holder of its lease. The holder renews the
lease while it works; a process that dies stops renewing, and once the lease has lapsed any
process may claim the job and run it again (``claim_lapsed``). Every change of state is a
conditional UPDATE on the state it expects, so a job cancelled by one process while another
finishes it ends in exactly one final state.

A finished job with a webhook keeps the same lease while its delivery is retried: a process that
dies mid-retry leaves a lapsed lease on a ``pending`` delivery, which another process claims and
finishes from the attempt count stored after each try (``claim_deliveries``).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import BigInteger, Engine, Float, Index, Integer, String, Text, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from cogserve.storage.database import Base, translated

Status = Literal["queued", "running", "success", "fail"]
ACTIVE: tuple[Status, ...] = ("queued", "running")
_JOB_ID = re.compile(r"job-[0-9a-f]{32}")


def new_job_id() -> str:
    # 128 random bits: the id is the only thing standing between a job and a stranger in open mode.
    return "job-" + secrets.token_hex(16)


def is_job_id(text: str) -> bool:
    """Shaped like ``new_job_id``'s output; anything else is not looked up at all."""
    return _JOB_ID.fullmatch(text) is not None


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_lease", "status", "lease_until"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The key that created the job; only it may read or cancel the job. None: created in open mode.
    key_id: Mapped[str | None] = mapped_column(String(64), index=True)
    request_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, index=True)
    # The validated request (seed included), so a claimed job re-runs exactly as asked.
    spec: Mapped[str] = mapped_column(Text)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    image_id: Mapped[str | None] = mapped_column(String(64))
    # BigInteger: a Unix time overflows PostgreSQL's 32-bit integer in 2038.
    image_created: Mapped[int | None] = mapped_column(BigInteger)
    content_filter: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # pending -> delivered | failed; None when no webhook was asked for.
    webhook_state: Mapped[str | None] = mapped_column(String(16))
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: an image, or an error."""

    status: Literal["success", "fail"]
    image_id: str | None = None
    image_created: int | None = None
    content_filter: str | None = None
    error_code: str | None = None
    error_message: str | None = None


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add(self, row: JobRow) -> None:
        with translated("record the job"), self._sessions.begin() as session:
            session.add(row)

    def get(self, job_id: str) -> JobRow | None:
        with translated("read the job"), self._sessions() as session:
            return session.get(JobRow, job_id)

    def finish(
        self, job_id: str, worker: str | None, outcome: JobOutcome, webhook: bool, lease_s: float = 0.0
    ) -> bool:
        """Record the final state if the job is still active (and, given ``worker``, still ours).

        With a webhook the lease is kept for ``lease_s`` more: it now covers the delivery.
        False: it already ended (cancelled, or claimed by another process after our lease lapsed).
        """
        now = time.time()
        return self._move(
            job_id,
            worker,
            ACTIVE,
            status=outcome.status,
            finished_at=now,
            progress=100 if outcome.status == "success" else None,
            image_id=outcome.image_id,
            image_created=outcome.image_created,
            content_filter=outcome.content_filter,
            error_code=outcome.error_code,
            error_message=outcome.error_message,
            webhook_state="pending" if webhook else None,
            lease_until=now + lease_s if webhook else 0.0,
        )

    def renew(self, worker: str, progress: dict[str, int], lease_s: float) -> set[str]:
        """Extend the lease of this worker's active jobs, saving their progress.

        Returns the ids still active and ours: a job missing from it was cancelled or taken over.
        """
        if not progress:
            return set()
        now = time.time()
        kept: set[str] = set()
        with translated("renew job leases"), self._sessions.begin() as session:
            for job_id, percent in progress.items():
                result = session.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.worker == worker, JobRow.status.in_(ACTIVE))
                    .values(
                        lease_until=now + lease_s,
                        progress=percent,
                        updated_at=now,
                        # Seen from other processes: a job with progress has left the queue.
                        **({"status": "running"} if percent > 0 else {}),
                    )
                )
                if getattr(result, "rowcount", 0):
                    kept.add(job_id)
        return kept

    def release(self, worker: str, job_ids: Iterable[str]) -> None:
        """Give jobs back (graceful stop): queued again, with a lapsed lease, for any process."""
        self._update_held(
            "release jobs",
            worker,
            job_ids,
            JobRow.status.in_(ACTIVE),
            status="queued",
            lease_until=0.0,
            progress=0,
            updated_at=time.time(),
        )

    def claim_lapsed(self, worker: str, lease_s: float, limit: int = 16) -> list[JobRow]:
        """Take over active jobs whose holder stopped renewing (it died); oldest first."""
        return self._claim(
            [JobRow.status.in_(ACTIVE)],
            worker,
            lease_s,
            limit,
            status="queued",
            progress=0,
            attempts=JobRow.attempts + 1,
        )

    def claim_deliveries(self, worker: str, lease_s: float, limit: int = 16) -> list[JobRow]:
        """Take over webhook deliveries whose holder died mid-retry; oldest first."""
        pending = [JobRow.status.not_in(ACTIVE), JobRow.webhook_state == "pending"]
        return self._claim(pending, worker, lease_s, limit)

    def _claim(
        self, conditions: list[Any], worker: str, lease_s: float, limit: int, **values: Any
    ) -> list[JobRow]:
        now = time.time()
        claimed: list[JobRow] = []
        with translated("claim jobs"), self._sessions() as session:
            query = (
                select(JobRow.id, JobRow.lease_until)
                .where(*conditions, JobRow.lease_until < now)
                .order_by(JobRow.created_at)
                .limit(limit)
            )
            candidates = list(session.execute(query))
        for job_id, lease_until in candidates:
            with translated("claim a job"), self._sessions.begin() as session:
                # Conditional on the lease we saw: of two processes claiming at once, one wins.
                result = session.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.lease_until == lease_until, *conditions)
                    .values(worker=worker, lease_until=now + lease_s, updated_at=now, **values)
                )
                if getattr(result, "rowcount", 0):
                    row = session.get(JobRow, job_id)
                    if row is not None:
                        claimed.append(row)
        return claimed

    def renew_deliveries(self, worker: str, job_ids: Iterable[str], lease_s: float) -> None:
        """Extend this worker's leases on the webhook deliveries it is still retrying."""
        pending, until = JobRow.webhook_state == "pending", time.time() + lease_s
        self._update_held("renew webhook deliveries", worker, job_ids, pending, lease_until=until)

    def release_deliveries(self, worker: str, job_ids: Iterable[str]) -> None:
        """Give pending deliveries back (graceful stop): any process may finish them at once."""
        pending = JobRow.webhook_state == "pending"
        self._update_held("release webhook deliveries", worker, job_ids, pending, lease_until=0.0)

    def _update_held(
        self, doing: str, worker: str, job_ids: Iterable[str], condition: Any, **values: object
    ) -> None:
        """Update those of ``job_ids`` this worker still holds and that still meet ``condition``."""
        ids = list(job_ids)
        if not ids:
            return
        with translated(doing), self._sessions.begin() as session:
            session.execute(
                update(JobRow).where(JobRow.id.in_(ids), JobRow.worker == worker, condition).values(**values)
            )

    def cancel(self, job_id: str, code: str, message: str) -> bool:
        """Fail an active job at its owner's request; False if it had already ended."""
        return self._move(
            job_id,
            None,
            ACTIVE,
            status="fail",
            finished_at=time.time(),
            error_code=code,
            error_message=message,
        )

    def webhook_attempted(
        self, job_id: str, attempts: int, state: Literal["pending", "delivered", "failed"] = "pending"
    ) -> None:
        """Record the attempts made so far (and the final state once there is one)."""
        with translated("record the webhook delivery"), self._sessions.begin() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id)
                .values(webhook_state=state, webhook_attempts=attempts)
            )

    def prune(self, finished_before: float) -> int:
        """Forget jobs that ended before the given time (their images have expired by then)."""
        with translated("prune finished jobs"), self._sessions.begin() as session:
            result = session.execute(
                delete(JobRow).where(JobRow.finished_at.is_not(None), JobRow.finished_at < finished_before)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def _move(self, job_id: str, worker: str | None, expected: tuple[Status, ...], **values: object) -> bool:
        conditions = [JobRow.id == job_id, JobRow.status.in_(expected)]
        if worker is not None:
            conditions.append(JobRow.worker == worker)
        changes = {name: value for name, value in values.items() if value is not None}
        changes["updated_at"] = time.time()
        with translated("update the job"), self._sessions.begin() as session:
            result = session.execute(update(JobRow).where(*conditions).values(**changes))
            return bool(getattr(result, "rowcount", 0))
