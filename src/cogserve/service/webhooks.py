"""Webhooks of async jobs: which URLs a client may name, and delivery with retries.

A webhook makes the server send a request wherever a client says, which is how request forgery
into a private network starts. So a URL is accepted only if its host is on the operator's allow
list (empty by default), redirects are never followed (a redirect could lead anywhere), and the
URL may not carry credentials.

Delivery is at least once: a process that dies after the receiver answered but before the answer
was recorded leaves the delivery to another process, which sends it again. Receivers deduplicate on
the ``X-Cogserve-Job-Id`` header.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from cogserve.errors import InvalidField
from cogserve.settings import JobSettings

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2048


def check_webhook_url(url: str, allow: list[str]) -> str:
    """The URL if a webhook may be sent there; InvalidField saying why not otherwise."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidField("webhook_url", f"longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidField("webhook_url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidField("webhook_url", "must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidField("webhook_url", "must not contain credentials")
    host = parts.hostname.lower()
    if not allow:
        raise InvalidField(
            "webhook_url", "webhooks are off on this server (the operator allows hosts with --webhook-allow)"
        )
    if host not in allow and (port is None or f"{host}:{port}" not in allow):
        raise InvalidField("webhook_url", f"host {host!r} is not allowed (--webhook-allow)")
    return url


async def deliver(
    url: str,
    payload: dict[str, Any],
    settings: JobSettings,
    job_id: str,
    *,
    made: int = 0,
    on_failure: Callable[[int], Awaitable[None]] | None = None,
) -> tuple[Literal["delivered", "failed"], int]:
    """POST the payload until a 2xx answer, with doubling waits; (state, attempts made in all).

    ``made``: attempts an earlier process already made (a resumed delivery goes on from there);
    ``on_failure(n)`` is awaited after each failed attempt n, so the count survives a crash.
    A 4xx other than 408/429 is final: the receiver understood and refused.
    """
    delay = settings.webhook_backoff_s * 2**made
    headers = {"X-Cogserve-Event": "job.finished", "X-Cogserve-Job-Id": job_id}
    async with httpx.AsyncClient(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
        for attempt in range(made + 1, settings.webhook_attempts + 1):
            try:
                response = await client.post(url, json=payload, headers=headers)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return "delivered", attempt
                reason = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    log.warning("webhook of job %s refused by the receiver (%s)", job_id, reason)
                    return "failed", attempt
            log.info("webhook of job %s: attempt %d failed (%s)", job_id, attempt, reason)
            if on_failure is not None:
                await on_failure(attempt)
            if attempt < settings.webhook_attempts:
                await asyncio.sleep(delay)
                delay *= 2
    log.warning("webhook of job %s given up after %d attempts", job_id, settings.webhook_attempts)
    return "failed", settings.webhook_attempts
