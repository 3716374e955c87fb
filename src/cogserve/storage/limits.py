"""Shared request limits in the metadata database: requests in flight, recent admissions, live processes.

Three tables, so that several server processes on one database enforce one set of limits:

- ``limit_slots``: one row per subject (API key, or end user of a key) of each request in flight,
  naming the process (worker) that holds it. Releasing a request deletes its rows.
- ``limit_requests``: one row per subject per admitted request, for the per-minute window. Rows
  that fell out of the window are deleted lazily (``upkeep``).
- ``limit_workers``: one row per live process, its ``last_seen`` renewed by a heartbeat. The slots
  of a worker not seen lately do not count, so a process killed with its requests in flight
  (``kill -9``, a lost machine) does not hold them forever; ``upkeep`` deletes them.

``admit`` checks and takes a request's places in ONE transaction, serialized per subject: on
PostgreSQL by a transaction-level advisory lock per subject (taken in a fixed order, so two
requests sharing subjects never deadlock); on SQLite by a ``BEGIN IMMEDIATE`` transaction, whose
write lock serializes writers of the whole file. Whether to admit is the caller's decision
(``decide``), taken between the reads and the writes; raising there rolls back and takes nothing.

The engine is the store's own (``for_url``): the SQLite recipe it needs changes how every
transaction of the engine begins, which other stores sharing an engine should not get.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Float,
    String,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Mapped, mapped_column

from cogserve.storage.database import Base, make_engine, translated

# A subject is encoded by the caller: a key id and a user_id (128 characters, each at most 6 once escaped).
SUBJECT_LENGTH = 1024
WORKER_LENGTH = 128


class LimitWorkerRow(Base):
    __tablename__ = "limit_workers"

    id: Mapped[str] = mapped_column(String(WORKER_LENGTH), primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)


class LimitSlotRow(Base):
    __tablename__ = "limit_slots"

    lease_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    subject: Mapped[str] = mapped_column(String(SUBJECT_LENGTH), primary_key=True, index=True)
    # Not a foreign key: a worker's row may be swept while its own process still releases slots.
    worker: Mapped[str] = mapped_column(String(WORKER_LENGTH))
    acquired_at: Mapped[float] = mapped_column(Float)


class LimitRequestRow(Base):
    __tablename__ = "limit_requests"

    # The primary key doubles as the window's index: a subject's admissions in time order.
    subject: Mapped[str] = mapped_column(String(SUBJECT_LENGTH), primary_key=True)
    at: Mapped[float] = mapped_column(Float, primary_key=True, index=True)
    lease_id: Mapped[str] = mapped_column(String(32), primary_key=True)


@dataclass(frozen=True)
class Want:
    """One subject of a request being admitted, and what ``admit`` must read and write for it."""

    subject: str
    count_in_flight: bool  # read its live slots (it has a concurrency limit)
    window: int  # read its latest admissions in the window, at most this many (0: none, not recorded)


@dataclass(frozen=True)
class Usage:
    """What a subject holds now: live requests in flight, latest admissions (oldest first)."""

    in_flight: int
    admitted: list[float]


@dataclass(frozen=True)
class Horizon:
    """How far back counts reach: admissions within ``window_s``, workers seen within ``alive_s``."""

    window_s: float
    alive_s: float


class LimitStore:
    def __init__(self, engine: Engine) -> None:
        """Use ``for_url``: on SQLite the engine must begin every transaction IMMEDIATE."""
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    @classmethod
    def for_url(cls, url: str) -> LimitStore:
        backend = make_url(url).get_backend_name()
        # READ COMMITTED whatever the server's default: each statement must see what the previous
        # holder of a subject's lock committed, not a snapshot taken before the lock was granted.
        options: dict[str, Any] = {"isolation_level": "READ COMMITTED"} if backend == "postgresql" else {}
        # On SQLite, BEGIN IMMEDIATE: the write lock is held from the first read, so no two
        # transactions read the same counts before either writes.
        engine = make_engine(url, immediate=True, pool_pre_ping=backend != "sqlite", **options)
        return cls(engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_schema(self) -> None:
        """Migrate the database to the current schema (every table: see ``storage.migrate``).

        Through a plain engine: this one's BEGIN IMMEDIATE hook would clash with the migration's own.
        """
        # Imported when migrating: Alembic takes longer to import than everything else here.
        from cogserve.storage.migrate import upgrade

        plain = make_engine(self._engine.url)
        try:
            upgrade(plain)
        finally:
            plain.dispose()

    def close(self) -> None:
        self._engine.dispose()

    def admit(
        self,
        worker: str,
        lease_id: str,
        wants: Sequence[Want],
        decide: Callable[[float, list[Usage]], None],
        *,
        clock: Callable[[], float],
        horizon: Horizon,
        touch: bool,
    ) -> float:
        """Read each subject's usage, let ``decide(now, usages)`` refuse (raise), then take the places.

        ``now`` is read once the subjects are locked. Slots are taken for every subject; an
        admission is recorded only where ``window`` > 0. ``touch`` renews this worker's
        ``last_seen`` in the same transaction (creating its row). Returns ``now``.
        """
        with translated("check request limits"), self._engine.begin() as connection:
            if self._postgres:
                for lock in sorted({_lock_key(want.subject) for want in wants}):
                    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
            now = clock()
            if touch:
                _touch(connection, worker, now)
            decide(now, _usages(connection, wants, now, horizon))
            connection.execute(
                _TAKE_SLOTS,
                [
                    {"lease_id": lease_id, "subject": w.subject, "worker": worker, "acquired_at": now}
                    for w in wants
                ],
            )
            recorded = [{"subject": w.subject, "at": now, "lease_id": lease_id} for w in wants if w.window]
            if recorded:
                connection.execute(_RECORD, recorded)
        return now

    def release(self, lease_ids: Sequence[str]) -> None:
        with translated("release request slots"), self._engine.begin() as connection:
            connection.execute(_RELEASE, {"leases": list(lease_ids)})

    def upkeep(self, worker: str, now: float, horizon: Horizon) -> None:
        """Renew this worker's ``last_seen``; delete dead workers, their slots, and old admissions."""
        alive_after = now - horizon.alive_s
        with translated("renew the worker heartbeat"), self._engine.begin() as connection:
            _touch(connection, worker, now)
            alive = select(LimitWorkerRow.id).where(LimitWorkerRow.last_seen > alive_after)
            connection.execute(delete(LimitSlotRow).where(LimitSlotRow.worker.not_in(alive)))
            connection.execute(delete(LimitWorkerRow).where(LimitWorkerRow.last_seen <= alive_after))
            connection.execute(delete(LimitRequestRow).where(LimitRequestRow.at <= now - horizon.window_s))

    def retire(self, worker: str) -> None:
        """Forget this worker and its slots (a clean shutdown)."""
        with translated("retire the worker"), self._engine.begin() as connection:
            connection.execute(delete(LimitSlotRow).where(LimitSlotRow.worker == worker))
            connection.execute(delete(LimitWorkerRow).where(LimitWorkerRow.id == worker))


# Built once: constructing a statement costs more than SQLite takes to run it.
_IN_FLIGHT = (
    select(LimitSlotRow.subject, func.count())
    .join(LimitWorkerRow, LimitWorkerRow.id == LimitSlotRow.worker)
    .where(
        LimitSlotRow.subject.in_(bindparam("subjects", expanding=True)),
        LimitWorkerRow.last_seen > bindparam("alive_after"),
    )
    .group_by(LimitSlotRow.subject)
)
_LATEST = (
    select(LimitRequestRow.at)
    .where(LimitRequestRow.subject == bindparam("subject"), LimitRequestRow.at > bindparam("start"))
    .order_by(LimitRequestRow.at.desc())
    .limit(bindparam("n"))
)
_TAKE_SLOTS = insert(LimitSlotRow)
_RECORD = insert(LimitRequestRow)


def _renew(dialect_insert: Callable[..., Any]) -> Any:
    statement = dialect_insert(LimitWorkerRow).values(
        id=bindparam("worker"), started_at=bindparam("now"), last_seen=bindparam("now")
    )
    return statement.on_conflict_do_update(
        index_elements=[LimitWorkerRow.id], set_={"last_seen": statement.excluded.last_seen}
    )


_RENEW_PG = _renew(postgresql.insert)
_RENEW_SQLITE = _renew(sqlite.insert)
_RELEASE = delete(LimitSlotRow).where(LimitSlotRow.lease_id.in_(bindparam("leases", expanding=True)))


def _usages(connection: Connection, wants: Sequence[Want], now: float, horizon: Horizon) -> list[Usage]:
    counted = [want.subject for want in wants if want.count_in_flight]
    in_flight: dict[str, int] = {}
    if counted:
        params = {"subjects": counted, "alive_after": now - horizon.alive_s}
        in_flight = {subject: int(count) for subject, count in connection.execute(_IN_FLIGHT, params)}
    usages = []
    for want in wants:
        admitted: list[float] = []
        if want.window:
            params = {"subject": want.subject, "start": now - horizon.window_s, "n": want.window}
            admitted = list(connection.execute(_LATEST, params).scalars().all())
            admitted.reverse()
        usages.append(Usage(in_flight.get(want.subject, 0), admitted))
    return usages


def _touch(connection: Connection, worker: str, now: float) -> None:
    # An upsert: the row may be missing (first beat, or swept while this process stalled), and two
    # threads of this process may renew it at once.
    upsert = _RENEW_PG if connection.dialect.name == "postgresql" else _RENEW_SQLITE
    connection.execute(upsert, {"worker": worker, "now": now})


def _lock_key(subject: str) -> int:
    """A signed 64-bit advisory-lock key for a subject; a collision only serializes two subjects."""
    digest = hashlib.blake2b(b"cogserve-limits\0" + subject.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
