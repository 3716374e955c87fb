"""Webhooks of async jobs: which URLs a client may name, and delivery with retries.

A webhook makes the server send a request wherever a client says, which is how request forgery
into a private network starts. So a URL is accepted only if its host is on the operator's allow
list (empty by default), redirects are never followed (a redirect could lead anywhere), and the
URL may not carry credentials.

A receiver cannot hold a delivery or the server's memory: its answer is read as a stream and
dropped past ``MAX_ANSWER_BYTES`` (only the status matters), and each attempt has one deadline,
``webhook_timeout_s``, for everything from connecting to the last byte read: httpx's own timeouts
are per operation, so a receiver trickling a byte at a time would never trip them.

URLs are logged by host only: a webhook URL often carries the receiver's token.

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
#: The most of a receiver's answer read before the rest is dropped.
MAX_ANSWER_BYTES = 64 * 1024


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
    host = urlsplit(url).netloc.rpartition("@")[2]
    timeout_s = settings.webhook_timeout_s
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        for attempt in range(made + 1, settings.webhook_attempts + 1):
            try:
                async with asyncio.timeout(timeout_s):
                    status = await _post(client, url, payload, headers)
            except TimeoutError:
                reason = f"no complete answer within {timeout_s:g} s"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            else:
                if 200 <= status < 300:
                    return "delivered", attempt
                reason = f"HTTP {status}"
                if 400 <= status < 500 and status not in (408, 429):
                    log.warning("webhook of job %s refused by the receiver %s (%s)", job_id, host, reason)
                    return "failed", attempt
            log.info("webhook of job %s to %s: attempt %d failed (%s)", job_id, host, attempt, reason)
            if on_failure is not None:
                await on_failure(attempt)
            if attempt < settings.webhook_attempts:
                await asyncio.sleep(delay)
                delay *= 2
    log.warning("webhook of job %s to %s given up after %d attempts", job_id, host, settings.webhook_attempts)
    return "failed", settings.webhook_attempts


async def _post(client: httpx.AsyncClient, url: str, payload: dict[str, Any], headers: dict[str, str]) -> int:
    """POST and read at most ``MAX_ANSWER_BYTES`` of the answer; its status."""
    async with client.stream("POST", url, json=payload, headers=headers) as response:
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= MAX_ANSWER_BYTES:
                break  # leaving the block closes the connection and drops the rest
        return response.status_code
