"""Per-key and per-end-user limits shared by every server process on one database.

``DatabaseLimiter`` enforces what ``MemoryLimiter`` does — requests per minute over a sliding
60 s window and requests in flight, per API key and per end user of a key, all checked and taken
at once, a refused request taking nothing, the same errors and Retry-After — but keeps the counts
in the metadata database (``cogserve.storage.limits``), so N processes on one SQLite file or one
PostgreSQL server admit exactly as many requests as one process would. The subjects and the
decision are ``MemoryLimiter``'s (``usage.subjects``, ``usage.refusals``), fed with what the
database holds.

A process that dies with requests in flight must not hold their slots forever. Each limiter is a
worker with a row in ``limit_workers``, renewed every ``heartbeat_s`` (5 s) by a task that
``start()`` launches; slots of a worker not seen for ``dead_after_s`` (``DEAD_AFTER_S``, 30 s)
do not count, and the next heartbeat of any live process deletes them. So after ``kill -9`` its
requests stop counting within 30 s. The flip side: a live process whose heartbeat stalls for 30 s
(an event loop blocked that long, the database unreachable) has its in-flight requests stop
counting — and deleted — until they end; its later requests count as usual.

Times are wall-clock seconds (``time.time``) of each process: hosts sharing a database should
keep their clocks in sync (NTP); a skew of S seconds shifts the window and the liveness by S.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from cogserve.auth.usage import WINDOW_S, Claim, Limits, Subject, UsageCounts, refusals, subjects
from cogserve.errors import StorageError
from cogserve.storage.limits import Horizon, LimitStore, Usage, Want

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
# A worker not seen for this long is dead: its slots stop counting. Six missed heartbeats.
DEAD_AFTER_S = 30.0


def new_worker_id() -> str:
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


class DatabaseLimiter:
    """The ``Limiter`` for several processes on one database; ``start()`` / ``stop()`` it (or
    ``async with``) around serving, so its heartbeat keeps its slots counted."""

    def __init__(
        self,
        database_url: str,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        dead_after_s: float = DEAD_AFTER_S,
        clock: Callable[[], float] = time.time,
        worker: str | None = None,
    ) -> None:
        if not 0 < 2 * heartbeat_s <= dead_after_s:
            raise ValueError("dead_after_s must be at least two heartbeats, and heartbeat_s above 0")
        self._store = LimitStore.for_url(database_url)
        self._heartbeat_s = heartbeat_s
        self._horizon = Horizon(window_s=WINDOW_S, alive_s=dead_after_s)
        self._clock = clock
        self.worker = worker or new_worker_id()
        # On SQLite one writer at a time holds the file anyway: this process's writers queue on a
        # mutex rather than in SQLite's busy handler, which sleeps 1, 2, 5... ms between retries.
        self._serial: contextlib.AbstractContextManager[object] = (
            threading.Lock() if self._store.engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        self._touched_at = -float("inf")
        self._unreleased: set[str] = set()  # leases whose release failed: retried by the heartbeat
        self._task: asyncio.Task[None] | None = None

    @property
    def store(self) -> LimitStore:
        return self._store

    def create_schema(self) -> None:
        """Create the limit tables if missing (blocking); migrations make them in a deployment."""
        self._store.create_schema()

    async def start(self) -> None:
        """Register this worker now (raising ``StorageError`` if the database is unreachable), then
        renew it every ``heartbeat_s`` until ``stop()``."""
        if self._task is None:
            await asyncio.to_thread(self._upkeep)
            self._task = asyncio.create_task(self._heartbeat(), name="limiter-heartbeat")

    async def stop(self) -> None:
        """Stop the heartbeat and forget this worker and any slot it still holds."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await asyncio.to_thread(self._retire)
        except StorageError:
            log.warning(
                "could not retire limiter worker %s; its slots lapse in %g s",
                self.worker,
                self._horizon.alive_s,
                exc_info=True,
            )
        self._store.close()

    async def __aenter__(self) -> DatabaseLimiter:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def acquire(
        self, key_id: str | None, key_limits: Limits, user_id: str | None, user_limits: Limits
    ) -> DatabaseLease:
        wanted = subjects(key_id, key_limits, user_id, user_limits)
        if not wanted:
            return DatabaseLease(self, None)
        lease_id = secrets.token_hex(16)
        admitting = asyncio.ensure_future(asyncio.to_thread(self._admit, lease_id, wanted))
        try:
            await asyncio.shield(admitting)
        except asyncio.CancelledError:
            # The thread goes on and may still take the slots: give them back once it is done.
            admitting.add_done_callback(lambda done: self._abandon(done, lease_id))
            raise
        return DatabaseLease(self, lease_id)

    def _admit(self, lease_id: str, wanted: list[Claim]) -> None:
        def decide(now: float, usages: list[Usage]) -> None:
            refused = [
                refusal
                for (_, label, limits), usage in zip(wanted, usages, strict=True)
                for refusal in refusals(
                    UsageCounts(deque(usage.admitted), usage.in_flight), label, limits, now
                )
            ]
            if refused:
                raise max(refused, key=lambda error: error.retry_after_s)

        wants = [
            Want(_encode(subject), count_in_flight=bool(limits.concurrency), window=limits.rpm)
            for subject, _, limits in wanted
        ]
        with self._serial:
            touch = self._clock() - self._touched_at >= self._heartbeat_s
            now = self._store.admit(
                self.worker, lease_id, wants, decide, clock=self._clock, horizon=self._horizon, touch=touch
            )
            if touch:
                self._touched_at = now

    def _abandon(self, admitting: asyncio.Future[None], lease_id: str) -> None:
        if admitting.cancelled() or admitting.exception() is not None:
            return  # nothing was taken
        asyncio.get_running_loop().run_in_executor(None, self._release_now, lease_id)

    async def _release(self, lease_id: str) -> None:
        await asyncio.to_thread(self._release_now, lease_id)

    def _release_now(self, lease_id: str) -> None:
        """Never raises: a request that ran must not fail for its release. A failed release is
        retried by the heartbeat; until then the slot counts (at most ``dead_after_s`` if we die)."""
        try:
            with self._serial:
                self._store.release([lease_id])
        except StorageError:
            log.warning(
                "could not release limiter slot %s; retrying at the next heartbeat", lease_id, exc_info=True
            )
            self._unreleased.add(lease_id)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await asyncio.to_thread(self._upkeep)
            except Exception:  # the next beat may succeed; a dead heartbeat task would not
                log.warning("limiter heartbeat of %s failed; retrying", self.worker, exc_info=True)

    def _upkeep(self) -> None:
        with self._serial:
            now = self._clock()
            self._store.upkeep(self.worker, now, self._horizon)
            self._touched_at = now
            pending = list(self._unreleased)
            if pending:
                self._store.release(pending)
                self._unreleased.difference_update(pending)

    def _retire(self) -> None:
        with self._serial:
            self._store.retire(self.worker)


def _encode(subject: Subject) -> str:
    # JSON keeps every user_id distinct and storable (control characters escaped).
    return json.dumps(subject, ensure_ascii=False, separators=(",", ":"))


class DatabaseLease:
    def __init__(self, limiter: DatabaseLimiter, lease_id: str | None) -> None:
        self._limiter = limiter
        self._lease_id = lease_id

    async def release(self) -> None:
        """Idempotent: only the first call gives the slots back."""
        lease_id, self._lease_id = self._lease_id, None
        if lease_id is not None:
            await self._limiter._release(lease_id)

    async def __aenter__(self) -> DatabaseLease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()
