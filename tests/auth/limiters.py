"""Limiters for the limit tests, made the same way whichever kind a test runs on.

``limiters.make(count)`` gives ``count`` limiters over ONE set of counts, as ``count`` server
processes would share them: for ``MemoryLimiter`` that is the process's one limiter, ``count``
times over; for ``DatabaseLimiter`` it is ``count`` limiters (workers) on one database. So a
behavioural test written against two limiters holds for both kinds. ``held()`` says what the
limiter keeps: (slots in flight, admissions in the window), from its memory or from its tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, select

from cogserve.auth import DatabaseLimiter, Limiter, MemoryLimiter
from cogserve.storage.limits import LimitRequestRow, LimitSlotRow

KINDS = ["memory", "sqlite", "postgresql"]


class Clock:
    """A clock a test moves by hand (``now``); shared by limiters it stands for hosts' wall clocks."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rows(limiter: DatabaseLimiter, table: Any, *where: ColumnElement[bool]) -> int:
    with limiter.store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


class MemoryLimiters:
    """The in-process limiter: every request of a process goes through its one ``MemoryLimiter``."""

    def __init__(self) -> None:
        self.limiter: MemoryLimiter | None = None

    def make(self, count: int = 1, **options: Any) -> list[Limiter]:
        self.limiter = MemoryLimiter(**options)
        return [self.limiter] * count

    def held(self) -> tuple[int, int]:
        assert self.limiter is not None
        counts = list(self.limiter._counts.values())
        return sum(c.in_flight for c in counts), sum(len(c.admitted) for c in counts)

    def close(self) -> None:
        pass


class DatabaseLimiters:
    """``DatabaseLimiter``s on one database, each standing for a server process; the first one made
    creates the schema. Calling it makes one (for the tests that only concern ``DatabaseLimiter``)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.made: list[DatabaseLimiter] = []

    def __call__(self, **options: Any) -> DatabaseLimiter:
        limiter = DatabaseLimiter(self.database_url, **options)
        if not self.made:
            limiter.create_schema()
        self.made.append(limiter)
        return limiter

    def make(self, count: int = 1, **options: Any) -> list[Limiter]:
        return [self(**options) for _ in range(count)]

    def held(self) -> tuple[int, int]:
        assert self.made
        return rows(self.made[0], LimitSlotRow), rows(self.made[0], LimitRequestRow)

    def close(self) -> None:
        for limiter in self.made:
            limiter.store.close()


Limiters = MemoryLimiters | DatabaseLimiters
