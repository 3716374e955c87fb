"""What both limiters decide with: the limits, the subjects a request counts against, and refusals.

``MemoryLimiter`` (``limits``) keeps each subject's ``UsageCounts`` in this process;
``DatabaseLimiter`` (``shared_limits``) reads them from the database. Both take a request's
subjects from ``subjects`` and ask ``refusals`` whether its limits have room, so the two enforce
the same limits with the same errors and Retry-After.

End users are counted per key: user ids are chosen by each key's application, and one
application's "user-1" must not use up another's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from cogserve.auth.user_ids import match_key
from cogserve.errors import ConcurrencyLimited, LimitExceeded, RateLimited

WINDOW_S = 60.0
# A refused request may try again after this long when only requests in flight stand in its way.
CONCURRENCY_RETRY_AFTER_S = 1

# ("key", key id) or ("user", key id or "", user_id).
Subject = tuple[str, ...]


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


class Claim(NamedTuple):
    """A subject a request counts against, how errors name it, and its limits."""

    subject: Subject
    label: str
    limits: Limits


@dataclass
class UsageCounts:
    """One subject's usage: admission times within the window (oldest first), requests in flight."""

    admitted: deque[float] = field(default_factory=deque)
    in_flight: int = 0


def subjects(key_id: str | None, key_limits: Limits, user_id: str | None, user_limits: Limits) -> list[Claim]:
    """The subjects a request counts against: its key, and its end user (of that key); a None id
    has none (no key in open mode, no ``user_id`` in the request)."""
    claims: list[Claim] = []
    if key_id is not None:
        claims.append(Claim(("key", key_id), f"API key {key_id}", key_limits))
    if user_id is not None:
        subject = ("user", key_id or "", match_key(user_id))
        claims.append(Claim(subject, f"user_id {user_id!r}", user_limits))
    return claims


def refusals(counts: UsageCounts | None, label: str, limits: Limits, now: float) -> list[LimitExceeded]:
    """The errors one more request would meet; none when ``limits`` have room (or ``counts`` is
    None: nothing counted yet). Drops admissions older than the window from ``counts``."""
    if counts is None:
        return []
    found: list[LimitExceeded] = []
    if limits.concurrency and counts.in_flight >= limits.concurrency:
        found.append(
            ConcurrencyLimited(
                f"concurrency too high: {label} already has {counts.in_flight} requests in flight "
                f"(limit {limits.concurrency})",
                retry_after_s=CONCURRENCY_RETRY_AFTER_S,
            )
        )
    if limits.rpm:
        forget_before(counts.admitted, now - WINDOW_S)
        if len(counts.admitted) >= limits.rpm:
            found.append(
                RateLimited(
                    f"request frequency too high: {label} may make {limits.rpm} requests per minute",
                    retry_after_s=counts.admitted[-limits.rpm] + WINDOW_S - now,
                )
            )
    return found


def forget_before(admitted: deque[float], cutoff: float) -> None:
    """Drop admission times at or before ``cutoff``."""
    while admitted and admitted[0] <= cutoff:
        admitted.popleft()
