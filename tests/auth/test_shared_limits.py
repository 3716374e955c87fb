"""Limits shared through the database: two limiters on one database stand for two server processes.

Every test runs on a SQLite file and on PostgreSQL (a fresh database on the session's server;
skipped, saying why, where no server can start). Where time matters a shared fake clock stands for
the wall clocks of two hosts; the kill -9 test uses a real process and real time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ColumnElement, func, select

from cogserve.auth import ConcurrencyLimited, DatabaseLimiter, Limits, RateLimited
from cogserve.auth.shared_limits import DatabaseLease
from cogserve.storage.limits import LimitRequestRow, LimitSlotRow, LimitWorkerRow
from tests.components.postgres import postgres_server  # noqa: F401  (the session's server fixture)

NONE = Limits()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cogserve.db'}"
        return
    with request.getfixturevalue("postgres_server").database() as url:
        yield url


@pytest.fixture
def make_limiter(database_url: str) -> Iterator[Callable[..., DatabaseLimiter]]:
    made: list[DatabaseLimiter] = []

    def make(**options: Any) -> DatabaseLimiter:
        limiter = DatabaseLimiter(database_url, **options)
        if not made:
            limiter.create_schema()
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.store.close()


def rows(limiter: DatabaseLimiter, table: Any, *where: ColumnElement[bool]) -> int:
    with limiter.store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def acquire_from_threads(
    limiters: list[DatabaseLimiter], count: int, key_limits: Limits, user_limits: Limits = NONE
) -> tuple[list[DatabaseLease], list[Exception]]:
    """``count`` threads, each with its own event loop, taking turns over the limiters, all let go at
    the same moment."""
    leases: list[DatabaseLease] = []
    refusals: list[Exception] = []
    barrier = threading.Barrier(count)

    def one(limiter: DatabaseLimiter) -> None:
        barrier.wait()
        try:
            leases.append(asyncio.run(limiter.acquire("k1", key_limits, "user-1", user_limits)))
        except (ConcurrencyLimited, RateLimited) as exc:
            refusals.append(exc)

    threads = [threading.Thread(target=one, args=(limiters[i % len(limiters)],)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return leases, refusals


def test_twenty_acquirers_on_two_limiters_against_concurrency_two_get_exactly_two(
    make_limiter: Callable[..., DatabaseLimiter],
) -> None:
    first, second = make_limiter(), make_limiter()
    leases, refusals = acquire_from_threads([first, second], 20, Limits(concurrency=2))
    assert len(leases) == 2 and len(refusals) == 18
    error = refusals[0]
    assert isinstance(error, ConcurrencyLimited)
    assert (error.status, error.code, error.headers["Retry-After"], error.retryable) == (
        429,
        "1302",
        "1",
        True,
    )
    assert "API key k1 already has 2 requests in flight (limit 2)" in error.message

    async def release_and_retry() -> None:
        await leases[0].release()
        await leases[0].release()  # a second release gives back nothing more
        async with await second.acquire("k1", Limits(concurrency=2), None, NONE):
            with pytest.raises(ConcurrencyLimited):
                await first.acquire("k1", Limits(concurrency=2), None, NONE)
        await leases[1].release()
        assert rows(first, LimitSlotRow) == 0

    asyncio.run(release_and_retry())


def test_twenty_acquirers_on_two_limiters_against_five_per_minute_get_exactly_five(
    make_limiter: Callable[..., DatabaseLimiter],
) -> None:
    leases, refusals = acquire_from_threads([make_limiter(), make_limiter()], 20, Limits(rpm=5))
    assert len(leases) == 5 and len(refusals) == 15
    assert all(isinstance(error, RateLimited) and error.code == "1303" for error in refusals)
    assert all(55 <= error.retry_after_s <= 60 for error in refusals)  # type: ignore[attr-defined]


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


def test_the_window_slides_across_limiters_and_retry_after_says_when(
    make_limiter: Callable[..., DatabaseLimiter],
) -> None:
    clock = Clock()
    limiters = [make_limiter(clock=clock), make_limiter(clock=clock)]
    limits = Limits(rpm=3)

    async def scenario() -> None:
        for turn, offset in enumerate((0, 10, 20)):
            clock.now = 1000 + offset
            await (await limiters[turn % 2].acquire("k1", limits, None, NONE)).release()
        clock.now = 1030
        with pytest.raises(RateLimited) as caught:
            await limiters[1].acquire("k1", limits, None, NONE)
        # The first request (t=1000) leaves the window at t=1060: 30 s from now.
        assert caught.value.headers["Retry-After"] == "30"
        assert not caught.value.retryable
        clock.now = 1060.5
        await limiters[1].acquire("k1", limits, None, NONE)  # room again
        with pytest.raises(RateLimited) as caught:
            await limiters[0].acquire("k1", limits, None, NONE)
        assert caught.value.headers["Retry-After"] == "10"  # t=1010 leaves at 1070

    asyncio.run(scenario())


def test_a_request_refused_by_one_limit_takes_nothing_from_the_others(
    make_limiter: Callable[..., DatabaseLimiter],
) -> None:
    first, second = make_limiter(), make_limiter()

    async def scenario() -> None:
        key_limits, user_limits = Limits(rpm=3, concurrency=2), Limits(concurrency=1)
        busy = await first.acquire("k1", key_limits, "user-1", user_limits)
        for limiter in (first, second, second):  # user-1 is busy: nothing of the key's is taken
            with pytest.raises(ConcurrencyLimited, match="user-1"):
                await limiter.acquire("k1", key_limits, "user-1", user_limits)
        assert rows(first, LimitSlotRow) == 2 and rows(first, LimitRequestRow) == 1  # busy's own
        await busy.release()
        await (await second.acquire("k1", key_limits, "user-1", user_limits)).release()
        await (await first.acquire("k1", key_limits, "user-2", user_limits)).release()
        with pytest.raises(RateLimited, match="API key k1"):
            await second.acquire("k1", key_limits, "user-3", user_limits)

    asyncio.run(scenario())


def test_end_users_are_counted_per_key_across_limiters(make_limiter: Callable[..., DatabaseLimiter]) -> None:
    first, second = make_limiter(), make_limiter()

    async def scenario() -> None:
        await first.acquire("app-a", NONE, "user-1", Limits(rpm=1))
        await second.acquire("app-b", NONE, "user-1", Limits(rpm=1))  # another app's user-1
        with pytest.raises(RateLimited, match="user_id 'user-1' may make 1 requests per minute"):
            await second.acquire("app-a", NONE, "user-1", Limits(rpm=1))

        one_at_a_time = Limits(concurrency=1)
        await first.acquire("app-a", NONE, "user-2", one_at_a_time)
        await second.acquire("app-b", NONE, "user-2", one_at_a_time)
        with pytest.raises(ConcurrencyLimited, match="user_id 'user-2' already has 1 requests"):
            await second.acquire("app-a", NONE, "user-2", one_at_a_time)
        # Open mode (no key): its user ids are one more namespace.
        await first.acquire(None, NONE, "user-2", one_at_a_time)
        with pytest.raises(ConcurrencyLimited):
            await second.acquire(None, NONE, "user-2", one_at_a_time)

    asyncio.run(scenario())


def test_when_several_limits_refuse_retry_after_is_the_longest_wait(
    make_limiter: Callable[..., DatabaseLimiter],
) -> None:
    clock = Clock()
    first, second = make_limiter(clock=clock), make_limiter(clock=clock)

    async def scenario() -> None:
        limits = Limits(rpm=1, concurrency=1)
        await first.acquire("k1", limits, None, NONE)  # held: both limits now refuse
        clock.now += 15
        with pytest.raises(RateLimited) as caught:
            await second.acquire("k1", limits, None, NONE)
        assert caught.value.headers["Retry-After"] == "45"

    asyncio.run(scenario())


def test_zero_means_unlimited_and_no_ids_touch_no_database(
    make_limiter: Callable[..., DatabaseLimiter],
) -> None:
    limiter = make_limiter()

    async def scenario() -> None:
        held = [await limiter.acquire("k1", NONE, "user-1", NONE) for _ in range(50)]
        assert rows(limiter, LimitSlotRow) == 100 and rows(limiter, LimitRequestRow) == 0
        held += [await limiter.acquire(None, Limits(rpm=1), None, Limits(rpm=1)) for _ in range(5)]
        assert rows(limiter, LimitSlotRow) == 100
        for lease in held:
            await lease.release()
        assert rows(limiter, LimitSlotRow) == 0

    asyncio.run(scenario())


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
