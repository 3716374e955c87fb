"""Per-key and per-user limits under real concurrency, with a controllable clock for the window.

The behaviour every limiter shares runs on each kind (the ``limiters`` fixture): the in-process
``MemoryLimiter``, and ``DatabaseLimiter`` on SQLite and on PostgreSQL, where two limiters on one
database stand for two server processes. What only one kind does is tested apart: below for
``MemoryLimiter``, in test_shared_limits.py for ``DatabaseLimiter``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from cogserve.auth import ConcurrencyLimited, Lease, Limiter, Limits, MemoryLimiter, RateLimited
from tests.auth.limiters import Clock, Limiters

NONE = Limits()


def acquire_from_threads(
    limiters: list[Limiter], count: int, key_limits: Limits, user_limits: Limits = NONE
) -> tuple[list[Lease], list[Exception]]:
    """``count`` threads, each with its own event loop, taking turns over the limiters, all let go at
    the same moment."""
    leases: list[Lease] = []
    refusals: list[Exception] = []
    barrier = threading.Barrier(count)

    def one(limiter: Limiter) -> None:
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


# -- every limiter -----------------------------------------------------------------------------------


def test_twenty_acquirers_against_concurrency_two_admit_exactly_two(limiters: Limiters) -> None:
    first, second = limiters.make(2)
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
        assert limiters.held() == (0, 0)

    asyncio.run(release_and_retry())


def test_twenty_acquirers_against_five_per_minute_admit_exactly_five(limiters: Limiters) -> None:
    leases, refusals = acquire_from_threads(limiters.make(2), 20, Limits(rpm=5))
    assert len(leases) == 5 and len(refusals) == 15
    assert all(isinstance(error, RateLimited) and error.code == "1303" for error in refusals)
    assert all(55 <= error.retry_after_s <= 60 for error in refusals)  # type: ignore[attr-defined]


def test_the_per_minute_window_slides_and_retry_after_says_when(limiters: Limiters) -> None:
    clock = Clock()
    first, second = limiters.make(2, clock=clock)
    limits = Limits(rpm=3)

    async def scenario() -> None:
        for limiter, offset in zip((first, second, first), (0, 10, 20), strict=True):
            clock.now = 1000 + offset
            await (await limiter.acquire("k1", limits, None, NONE)).release()
        clock.now = 1030
        with pytest.raises(RateLimited) as caught:
            await second.acquire("k1", limits, None, NONE)
        # The first request (t=1000) leaves the window at t=1060: 30 s from now.
        assert caught.value.headers["Retry-After"] == "30"
        assert not caught.value.retryable  # the SDK's 3 quick retries could not succeed
        clock.now = 1060.5
        await second.acquire("k1", limits, None, NONE)  # room again
        with pytest.raises(RateLimited) as caught:
            await first.acquire("k1", limits, None, NONE)
        assert caught.value.headers["Retry-After"] == "10"  # t=1010 leaves at 1070

    asyncio.run(scenario())


def test_a_request_refused_by_one_limit_takes_nothing_from_the_others(limiters: Limiters) -> None:
    first, second = limiters.make(2)

    async def scenario() -> None:
        key_limits, user_limits = Limits(rpm=3, concurrency=2), Limits(concurrency=1)
        busy = await first.acquire("k1", key_limits, "user-1", user_limits)
        for limiter in (first, second, second):  # user-1 is busy: nothing of the key's is taken
            with pytest.raises(ConcurrencyLimited, match="user-1"):
                await limiter.acquire("k1", key_limits, "user-1", user_limits)
        assert limiters.held() == (2, 1)  # busy's own: a slot for the key and the user, one admission
        await busy.release()
        await (await second.acquire("k1", key_limits, "user-1", user_limits)).release()
        await (await first.acquire("k1", key_limits, "user-2", user_limits)).release()
        with pytest.raises(RateLimited, match="API key k1"):
            await second.acquire("k1", key_limits, "user-3", user_limits)

    asyncio.run(scenario())


def test_end_users_are_counted_per_key(limiters: Limiters) -> None:
    first, second = limiters.make(2)

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


def test_when_several_limits_refuse_retry_after_is_the_longest_wait(limiters: Limiters) -> None:
    clock = Clock()
    first, second = limiters.make(2, clock=clock)

    async def scenario() -> None:
        limits = Limits(rpm=1, concurrency=1)
        await first.acquire("k1", limits, None, NONE)  # held: both limits now refuse
        clock.now += 15
        with pytest.raises(RateLimited) as caught:
            await second.acquire("k1", limits, None, NONE)
        assert caught.value.headers["Retry-After"] == "45"

    asyncio.run(scenario())


def test_zero_means_unlimited_and_no_ids_means_no_limits(limiters: Limiters) -> None:
    (limiter,) = limiters.make()

    async def scenario() -> None:
        held = [await limiter.acquire("k1", NONE, "user-1", NONE) for _ in range(50)]
        assert limiters.held() == (100, 0)  # in flight for the key and the user; no rpm, no log
        held += [await limiter.acquire(None, Limits(rpm=1), None, Limits(rpm=1)) for _ in range(5)]
        assert limiters.held() == (100, 0)  # no ids: nothing is counted at all
        for lease in held:
            await lease.release()
        assert limiters.held() == (0, 0)

    asyncio.run(scenario())


def test_a_key_without_its_own_limits_gets_the_default() -> None:
    default = Limits(rpm=60, concurrency=4)
    assert Limits.resolve(None, None, default=default) == default
    assert Limits.resolve(0, 2, default=default) == Limits(rpm=0, concurrency=2)
    with pytest.raises(ValueError):
        Limits(rpm=-1)


# -- MemoryLimiter only ------------------------------------------------------------------------------


def test_memory_limiter_forgets_idle_subjects_after_a_window() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)

    async def scenario() -> None:
        for user in range(100):
            await (await limiter.acquire("k1", NONE, f"user-{user}", Limits(rpm=10))).release()
        held = await limiter.acquire("k2", Limits(rpm=10), None, NONE)
        clock.now += 61
        await (await limiter.acquire("k3", NONE, None, NONE)).release()
        # Only what is still in flight (k2) or just admitted (k3) is kept.
        assert sorted(limiter._counts) == [("key", "k2"), ("key", "k3")]
        await held.release()

    asyncio.run(scenario())
