"""Per-key and per-end-user limits: requests per minute and requests in flight.

A request is admitted only if every limit that applies to it has room: its key's, and its end
user's (``user_id``) when it sent one. All are checked and taken under one lock, so a request
refused by one limit takes nothing from the others. A refused request does not count against the
per-minute limit, so a client that keeps retrying is not locked out for longer.

End users are counted per key: user ids are chosen by each key's application, and one
application's "user-1" must not use up another's.

``Limiter`` is the interface the API depends on; ``MemoryLimiter`` keeps the counts in this
process, so with several server processes each enforces its limits on its own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from cogserve.errors import ConcurrencyLimited, LimitExceeded, RateLimited

WINDOW_S = 60.0
# A refused request may try again after this long when only requests in flight stand in its way.
CONCURRENCY_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Limits:
    """Requests per minute and in flight; 0 means unlimited."""

    rpm: int = 0
    concurrency: int = 0

    def __post_init__(self) -> None:
        if self.rpm < 0 or self.concurrency < 0:
            raise ValueError("limits must be 0 (unlimited) or more")

    @classmethod
    def resolve(cls, rpm: int | None, concurrency: int | None, *, default: Limits) -> Limits:
        """A key's own limits, where None (not set on the key) falls back to the default."""
        return cls(
            rpm=default.rpm if rpm is None else rpm,
            concurrency=default.concurrency if concurrency is None else concurrency,
        )


class Lease(Protocol):
    """Admission of one request; release it when the request ends (``async with`` does)."""

    async def release(self) -> None: ...

    async def __aenter__(self) -> Lease: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Limiter(Protocol):
    async def acquire(
        self, key_id: str | None, key_limits: Limits, user_id: str | None, user_limits: Limits
    ) -> Lease:
        """Admit a request or raise ``ConcurrencyLimited`` / ``RateLimited``. A None id skips that
        subject's limits (no key in open mode, no ``user_id`` in the request)."""
        ...


_Subject = tuple[str, ...]


@dataclass
class _Counts:
    admitted: deque[float] = field(default_factory=deque)  # admission times within the window
    in_flight: int = 0


class MemoryLimiter:
    """Sliding-window log per subject: exact "at most N in any 60 s", memory O(N) per subject."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # not asyncio's: the critical section never awaits
        self._counts: dict[_Subject, _Counts] = {}
        self._last_sweep = clock()

    async def acquire(
        self, key_id: str | None, key_limits: Limits, user_id: str | None, user_limits: Limits
    ) -> MemoryLease:
        wanted: list[tuple[_Subject, str, Limits]] = []
        if key_id is not None:
            wanted.append((("key", key_id), f"API key {key_id}", key_limits))
        if user_id is not None:
            wanted.append((("user", key_id or "", user_id), f"user_id {user_id!r}", user_limits))
        with self._lock:
            now = self._clock()
            self._sweep(now)
            refusals = [
                refusal
                for subject, label, limits in wanted
                for refusal in _refusals(self._counts.get(subject), label, limits, now)
            ]
            if refusals:
                raise max(refusals, key=lambda error: error.retry_after_s)
            for subject, _, limits in wanted:
                counts = self._counts.setdefault(subject, _Counts())
                counts.in_flight += 1
                if limits.rpm:
                    counts.admitted.append(now)
        return MemoryLease(self, [subject for subject, _, _ in wanted])

    def _release(self, subjects: list[_Subject]) -> None:
        with self._lock:
            for subject in subjects:
                self._counts[subject].in_flight -= 1

    def _sweep(self, now: float) -> None:
        """Forget subjects with nothing in flight and nothing in the window, once a window."""
        if now - self._last_sweep < WINDOW_S:
            return
        self._last_sweep = now
        for subject, counts in list(self._counts.items()):
            _forget_before(counts.admitted, now - WINDOW_S)
            if not counts.in_flight and not counts.admitted:
                del self._counts[subject]


def _refusals(counts: _Counts | None, label: str, limits: Limits, now: float) -> list[LimitExceeded]:
    if counts is None:
        return []
    refusals: list[LimitExceeded] = []
    if limits.concurrency and counts.in_flight >= limits.concurrency:
        refusals.append(
            ConcurrencyLimited(
                f"concurrency too high: {label} already has {counts.in_flight} requests in flight "
                f"(limit {limits.concurrency})",
                retry_after_s=CONCURRENCY_RETRY_AFTER_S,
            )
        )
    if limits.rpm:
        _forget_before(counts.admitted, now - WINDOW_S)
        if len(counts.admitted) >= limits.rpm:
            refusals.append(
                RateLimited(
                    f"request frequency too high: {label} may make {limits.rpm} requests per minute",
                    retry_after_s=counts.admitted[-limits.rpm] + WINDOW_S - now,
                )
            )
    return refusals


def _forget_before(admitted: deque[float], cutoff: float) -> None:
    while admitted and admitted[0] <= cutoff:
        admitted.popleft()


class MemoryLease:
    def __init__(self, limiter: MemoryLimiter, subjects: list[_Subject]) -> None:
        self._limiter = limiter
        self._subjects: list[_Subject] | None = subjects

    async def release(self) -> None:
        """Idempotent: only the first call gives the slots back."""
        subjects, self._subjects = self._subjects, None
        if subjects is not None:
            self._limiter._release(subjects)

    async def __aenter__(self) -> MemoryLease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()
