"""Per-key and per-end-user limits: requests per minute and requests in flight.

A request is admitted only if every limit that applies to it has room: its key's, and its end
user's (``user_id``) when it sent one. All are checked and taken under one lock, so a request
refused by one limit takes nothing from the others. A refused request does not count against the
per-minute limit, so a client that keeps retrying is not locked out for longer. Which subjects
a request counts against, and what refuses it, is ``usage``'s, shared with ``DatabaseLimiter``.

``Limiter`` is the interface the API depends on; ``MemoryLimiter`` keeps the counts in this
process, so with several server processes each enforces its limits on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from cogserve.auth.usage import WINDOW_S, Limits, Subject, UsageCounts, forget_before, refusals, subjects


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


class MemoryLimiter:
    """Sliding-window log per subject: exact "at most N in any 60 s", memory O(N) per subject."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # not asyncio's: the critical section never awaits
        self._counts: dict[Subject, UsageCounts] = {}
        self._last_sweep = clock()

    async def acquire(
        self, key_id: str | None, key_limits: Limits, user_id: str | None, user_limits: Limits
    ) -> MemoryLease:
        wanted = subjects(key_id, key_limits, user_id, user_limits)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            refused = [
                refusal
                for subject, label, limits in wanted
                for refusal in refusals(self._counts.get(subject), label, limits, now)
            ]
            if refused:
                raise max(refused, key=lambda error: error.retry_after_s)
            for subject, _, limits in wanted:
                counts = self._counts.setdefault(subject, UsageCounts())
                counts.in_flight += 1
                if limits.rpm:
                    counts.admitted.append(now)
        return MemoryLease(self, [subject for subject, _, _ in wanted])

    def _release(self, held: list[Subject]) -> None:
        with self._lock:
            for subject in held:
                self._counts[subject].in_flight -= 1

    def _sweep(self, now: float) -> None:
        """Forget subjects with nothing in flight and nothing in the window, once a window."""
        if now - self._last_sweep < WINDOW_S:
            return
        self._last_sweep = now
        for subject, counts in list(self._counts.items()):
            forget_before(counts.admitted, now - WINDOW_S)
            if not counts.in_flight and not counts.admitted:
                del self._counts[subject]


class MemoryLease:
    def __init__(self, limiter: MemoryLimiter, held: list[Subject]) -> None:
        self._limiter = limiter
        self._held: list[Subject] | None = held

    async def release(self) -> None:
        """Idempotent: only the first call gives the slots back."""
        held, self._held = self._held, None
        if held is not None:
            self._limiter._release(held)

    async def __aenter__(self) -> MemoryLease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()
