"""Per-key and per-user limits under real concurrency, with a controllable clock for the window."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cogserve.auth import ConcurrencyLimited, Limits, MemoryLimiter, RateLimited
from cogserve.auth.limits import MemoryLease

NONE = Limits()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def acquire_from_threads(
    limiter: MemoryLimiter, count: int, key_limits: Limits, user_limits: Limits = NONE
) -> tuple[list[MemoryLease], list[Exception]]:
    """``count`` threads, each with its own event loop, all released at the same moment."""
    leases: list[MemoryLease] = []
    refusals: list[Exception] = []
    barrier = threading.Barrier(count)

    def one() -> None:
        barrier.wait()
        try:
            leases.append(asyncio.run(limiter.acquire("k1", key_limits, "user-1", user_limits)))
        except (ConcurrencyLimited, RateLimited) as exc:
            refusals.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return leases, refusals


def test_twenty_threads_against_concurrency_two_admit_exactly_two() -> None:
    limiter = MemoryLimiter()
    leases, refusals = acquire_from_threads(limiter, 20, Limits(concurrency=2))
    assert len(leases) == 2 and len(refusals) == 18
    error = refusals[0]
    assert isinstance(error, ConcurrencyLimited)
    assert (error.status, error.code, error.headers["Retry-After"], error.retryable) == (
        429,
        "1302",
        "1",
        True,
    )
    assert "2 requests in flight" in error.message

    async def release_and_retry() -> None:
        await leases[0].release()
        await leases[0].release()  # a second release gives back nothing more
        async with await limiter.acquire("k1", Limits(concurrency=2), None, NONE):
            with pytest.raises(ConcurrencyLimited):
                await limiter.acquire("k1", Limits(concurrency=2), None, NONE)

    asyncio.run(release_and_retry())


def test_twenty_threads_against_five_per_minute_admit_exactly_five() -> None:
    leases, refusals = acquire_from_threads(MemoryLimiter(), 20, Limits(rpm=5))
    assert len(leases) == 5 and len(refusals) == 15
    assert all(isinstance(error, RateLimited) and error.code == "1303" for error in refusals)


def test_the_per_minute_window_slides_and_retry_after_says_when() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    limits = Limits(rpm=3)

    async def scenario() -> None:
        for offset in (0, 10, 20):
            clock.now = 1000 + offset
            await (await limiter.acquire("k1", limits, None, NONE)).release()
        clock.now = 1030
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire("k1", limits, None, NONE)
        # The first request (t=1000) leaves the window at t=1060: 30 s from now.
        assert caught.value.headers["Retry-After"] == "30"
        assert not caught.value.retryable  # the SDK's 3 quick retries could not succeed
        clock.now = 1060.5
        await limiter.acquire("k1", limits, None, NONE)  # room again
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire("k1", limits, None, NONE)
        assert caught.value.headers["Retry-After"] == "10"  # t=1010 leaves at 1070

    asyncio.run(scenario())


def test_a_request_refused_by_one_limit_takes_nothing_from_the_others() -> None:
    limiter = MemoryLimiter()

    async def scenario() -> None:
        key_limits, user_limits = Limits(rpm=3, concurrency=2), Limits(concurrency=1)
        busy = await limiter.acquire("k1", key_limits, "user-1", user_limits)
        for _ in range(3):  # user-1 is busy: refused, and the key's rpm and concurrency stay untouched
            with pytest.raises(ConcurrencyLimited, match="user-1"):
                await limiter.acquire("k1", key_limits, "user-1", user_limits)
        await busy.release()
        lease = await limiter.acquire("k1", key_limits, "user-1", user_limits)
        await lease.release()
        await (await limiter.acquire("k1", key_limits, "user-2", user_limits)).release()
        with pytest.raises(RateLimited, match="API key k1"):
            await limiter.acquire("k1", key_limits, "user-3", user_limits)

    asyncio.run(scenario())


def test_end_users_are_counted_per_key() -> None:
    limiter = MemoryLimiter()

    async def scenario() -> None:
        user_limits = Limits(rpm=1)
        await limiter.acquire("app-a", NONE, "user-1", user_limits)
        await limiter.acquire("app-b", NONE, "user-1", user_limits)  # another app's user-1
        with pytest.raises(RateLimited, match="user-1"):
            await limiter.acquire("app-a", NONE, "user-1", user_limits)

    asyncio.run(scenario())


def test_when_several_limits_refuse_retry_after_is_the_longest_wait() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)

    async def scenario() -> None:
        limits = Limits(rpm=1, concurrency=1)
        await limiter.acquire("k1", limits, None, NONE)  # held: both limits now refuse
        clock.now += 15
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire("k1", limits, None, NONE)
        assert caught.value.headers["Retry-After"] == "45"

    asyncio.run(scenario())


def test_zero_means_unlimited_and_no_ids_means_no_limits() -> None:
    limiter = MemoryLimiter()

    async def scenario() -> None:
        held = [await limiter.acquire("k1", NONE, "user-1", NONE) for _ in range(500)]
        held += [await limiter.acquire(None, Limits(rpm=1), None, Limits(rpm=1)) for _ in range(5)]
        assert len(held) == 505

    asyncio.run(scenario())


def test_a_key_without_its_own_limits_gets_the_default() -> None:
    default = Limits(rpm=60, concurrency=4)
    assert Limits.resolve(None, None, default=default) == default
    assert Limits.resolve(0, 2, default=default) == Limits(rpm=0, concurrency=2)
    with pytest.raises(ValueError):
        Limits(rpm=-1)


def test_idle_subjects_are_forgotten_after_a_window() -> None:
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
