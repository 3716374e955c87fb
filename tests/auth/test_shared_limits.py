"""What only ``DatabaseLimiter`` does: workers, heartbeats, sweeping and pruning its tables.

The behaviour every limiter shares (concurrency, the sliding window, Retry-After, per-key users) is in
test_limits.py, run there on this limiter too. Here every test runs on a SQLite file and on PostgreSQL
(a fresh database on the session's server; skipped, saying why, where no server can start), with two
limiters on one database standing for two server processes. Where time matters a shared fake clock
stands for the wall clocks of two hosts; the kill -9 test uses a real process and real time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from cogserve.auth import ConcurrencyLimited, DatabaseLimiter, Limits
from cogserve.auth.shared_limits import DatabaseLease
from cogserve.storage.limits import LimitRequestRow, LimitSlotRow, LimitWorkerRow
from tests.auth.limiters import Clock, rows

NONE = Limits()


def test_a_fresh_limiter_admits_a_burst_on_distinct_keys(
    make_limiter: Callable[..., DatabaseLimiter],
) -> None:
    """Twenty threads of one new process register its worker row at once without tripping."""
    limiter = make_limiter()
    leases: list[DatabaseLease] = []
    barrier = threading.Barrier(20)

    def one(index: int) -> None:
        barrier.wait()
        leases.append(asyncio.run(limiter.acquire(f"k{index}", Limits(concurrency=1), None, NONE)))

    threads = [threading.Thread(target=one, args=(index,)) for index in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(leases) == 20 and rows(limiter, LimitWorkerRow) == 1


def test_a_dead_workers_slots_stop_counting_after_the_timeout_and_are_swept(
    make_limiter: Callable[..., DatabaseLimiter],
) -> None:
    clock = Clock()
    dead, alive = make_limiter(clock=clock), make_limiter(clock=clock)
    limits = Limits(concurrency=2)

    async def scenario() -> None:
        held = [await dead.acquire("k1", limits, None, NONE) for _ in range(2)]  # then it stops beating
        clock.now += 29
        with pytest.raises(ConcurrencyLimited):
            await alive.acquire("k1", limits, None, NONE)
        clock.now += 1.5  # 30.5 s since it was last seen
        await alive.acquire("k1", limits, None, NONE)
        await alive.acquire("k1", limits, None, NONE)
        with pytest.raises(ConcurrencyLimited):
            await alive.acquire("k1", limits, None, NONE)
        assert rows(alive, LimitSlotRow, LimitSlotRow.worker == dead.worker) == 2  # not counted, still there
        await alive.start()  # its upkeep runs at once
        assert rows(alive, LimitSlotRow, LimitSlotRow.worker == dead.worker) == 0
        assert rows(alive, LimitWorkerRow, LimitWorkerRow.id == dead.worker) == 0
        for lease in held:
            await lease.release()  # releasing a swept slot is harmless
        await alive.stop()

    asyncio.run(scenario())


def test_stop_gives_back_the_workers_slots_at_once(make_limiter: Callable[..., DatabaseLimiter]) -> None:
    first, second = make_limiter(), make_limiter()

    async def scenario() -> None:
        await first.start()
        await first.acquire("k1", Limits(concurrency=1), None, NONE)
        with pytest.raises(ConcurrencyLimited):
            await second.acquire("k1", Limits(concurrency=1), None, NONE)
        await first.stop()
        await second.acquire("k1", Limits(concurrency=1), None, NONE)
        assert rows(second, LimitWorkerRow, LimitWorkerRow.id == first.worker) == 0

    asyncio.run(scenario())


def test_old_admissions_are_pruned(make_limiter: Callable[..., DatabaseLimiter]) -> None:
    clock = Clock()
    limiter = make_limiter(clock=clock)

    async def scenario() -> None:
        for user in range(10):
            await (await limiter.acquire("k1", Limits(rpm=100), f"user-{user}", Limits(rpm=5))).release()
        assert rows(limiter, LimitRequestRow) == 20
        clock.now += 59
        await (await limiter.acquire("k2", Limits(rpm=100), None, NONE)).release()
        clock.now += 1.5
        await limiter.start()  # upkeep: only k2's admission is still in the window
        assert rows(limiter, LimitRequestRow) == 1
        await limiter.stop()

    asyncio.run(scenario())


def test_a_cancelled_acquire_gives_back_what_its_thread_took(
    make_limiter: Callable[..., DatabaseLimiter],
) -> None:
    entered, proceed = threading.Event(), threading.Event()

    def held_clock() -> float:
        entered.set()
        proceed.wait(10)
        return time.time()

    slow, other = make_limiter(clock=held_clock), make_limiter()
    limits = Limits(concurrency=1)

    async def scenario() -> None:
        task = asyncio.create_task(slow.acquire("k1", limits, None, NONE))
        assert await asyncio.to_thread(entered.wait, 10)
        task.cancel()  # while its thread is still to take the slot
        with pytest.raises(asyncio.CancelledError):
            await task
        proceed.set()
        # Until the abandoned thread has given its slot back, the key is full; then it is free.
        for _ in range(500):
            try:
                lease = await other.acquire("k1", limits, None, NONE)
                break
            except ConcurrencyLimited:
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("the cancelled acquire kept its slot")
        await asyncio.sleep(0.2)  # the abandoned thread, if still running, must not take a slot
        assert rows(other, LimitSlotRow) == 1
        await lease.release()

    asyncio.run(scenario())


CHILD = """
import asyncio, sys
from cogserve.auth import DatabaseLimiter, Limits

async def main():
    limiter = DatabaseLimiter(sys.argv[1], heartbeat_s=0.2, dead_after_s=1.0)
    await limiter.start()
    for _ in range(2):
        await limiter.acquire("k1", Limits(concurrency=2), None, Limits())
    print(limiter.worker, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_slots_of_a_killed_process_count_while_it_beats_then_lapse(
    make_limiter: Callable[..., DatabaseLimiter], database_url: str
) -> None:
    survivor = make_limiter(heartbeat_s=0.2, dead_after_s=1.0)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, database_url], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert child.stdout is not None
        worker = child.stdout.readline().strip()
        assert worker, "the child limiter did not start"
        limits = Limits(concurrency=2)

        async def scenario() -> float:
            await survivor.start()
            await asyncio.sleep(2.0)  # twice the timeout: the child's heartbeat keeps its slots
            with pytest.raises(ConcurrencyLimited):
                await survivor.acquire("k1", limits, None, NONE)
            os.kill(child.pid, signal.SIGKILL)
            killed = time.monotonic()
            while True:
                try:
                    await survivor.acquire("k1", limits, None, NONE)
                    break
                except ConcurrencyLimited:
                    assert time.monotonic() - killed < 5
                    await asyncio.sleep(0.05)
            lapsed = time.monotonic() - killed
            for _ in range(100):  # the survivor's heartbeat deletes the dead worker's slots
                if rows(survivor, LimitSlotRow, LimitSlotRow.worker == worker) == 0:
                    break
                await asyncio.sleep(0.05)
            assert rows(survivor, LimitSlotRow, LimitSlotRow.worker == worker) == 0
            await survivor.stop()
            return lapsed

        lapsed = asyncio.run(scenario())
        assert 0.5 < lapsed < 2.5
    finally:
        child.kill()
        child.wait(10)


def test_nonsense_timing_is_refused(database_url: str) -> None:
    with pytest.raises(ValueError):
        DatabaseLimiter(database_url, heartbeat_s=10, dead_after_s=15)
