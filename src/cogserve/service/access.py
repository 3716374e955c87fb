"""Who may generate: API keys, blocked end users, per-key and per-user limits, and the audit log."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from cogserve.auth import ApiKey, ApiKeys, Limiter, Limits, SecretBox, TokenVerifier
from cogserve.auth.crypto import load_or_create_server_key, parse_server_key
from cogserve.auth.user_ids import match_key
from cogserve.errors import (
    AuthError,
    CogserveError,
    ContentBlocked,
    LimitExceeded,
    UserBlocked,
)
from cogserve.settings import Settings
from cogserve.storage.accounts import AccountStore, AuditEntry, AuditOutcome, BlockedUserRow

log = logging.getLogger(__name__)

OPEN_MODE_WARNING = (
    "AUTH IS OFF: no API key exists and --require-auth is not set, so ANYONE who can reach this port "
    "can generate images. Create a key (cogserve keys create) or pass --require-auth before exposing it."
)


def server_key(settings: Settings) -> bytes:
    """The key that seals API-key secrets: from settings, else the key file (made on first use)."""
    if settings.auth.server_key is not None:
        return parse_server_key(settings.auth.server_key.get_secret_value())
    return load_or_create_server_key(settings.server_key_file)


class AccessControl:
    def __init__(self, settings: Settings, accounts: AccountStore, limiter: Limiter) -> None:
        self._settings = settings
        self._accounts = accounts
        self._limiter = limiter
        self._keys = ApiKeys(accounts, SecretBox(server_key(settings)))
        self._verifier = TokenVerifier(self._keys)
        # Once any key exists auth stays on (revoking the last key does not reopen the server).
        self._auth_on = settings.auth.require_auth

    @property
    def keys(self) -> ApiKeys:
        return self._keys

    @property
    def accounts(self) -> AccountStore:
        return self._accounts

    def auth_required(self) -> bool:
        if not self._auth_on:
            self._auth_on = self._accounts.has_keys()
        return self._auth_on

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The caller's key, or None in open mode; raises ``AuthError`` (blocking: reads the DB)."""
        if not self.auth_required():
            return None
        return self._verifier.verify(authorization)

    @asynccontextmanager
    async def admitted(self, key: ApiKey | None, user_id: str | None) -> AsyncIterator[None]:
        """Hold this request's place within its key's and user's limits while it runs."""
        if user_id is not None:
            block = await asyncio.to_thread(self._block_of, user_id)
            if block is not None:
                reason = f": {block.reason}" if block.reason else ""
                raise UserBlocked(f"user_id {user_id!r} is blocked by the operator{reason}")
        auth = self._settings.auth
        key_limits = Limits.resolve(
            key.rpm_limit if key else None,
            key.concurrency_limit if key else None,
            default=Limits(auth.key_rpm, auth.key_concurrency),
        )
        lease = await self._limiter.acquire(
            key.id if key else None, key_limits, user_id, Limits(auth.user_rpm, auth.user_concurrency)
        )
        async with lease:
            yield

    def _block_of(self, user_id: str) -> BlockedUserRow | None:
        # Blocks are stored by match key; a block written before ids were matched so is found by
        # the id as it was typed.
        return self._accounts.get_block(match_key(user_id)) or self._accounts.get_block(user_id)

    @asynccontextmanager
    async def audit(self, request_id: str, route: str) -> AsyncIterator[AuditNote]:
        """Write one audit row when the block ends, with the outcome its exception (if any) means.

        Failing to write it is logged, never shown to the client: the image is already made.
        """
        note = AuditNote()
        started = time.monotonic()
        error: BaseException | None = None
        try:
            yield note
        except BaseException as exc:
            error = exc
            raise
        finally:
            entry = AuditEntry(
                request_id=request_id,
                route=route,
                outcome=outcome_of(error),
                duration_s=time.monotonic() - started,
                # A failed credential that named an existing key is audited under that key.
                key_id=error.key_id if isinstance(error, AuthError) else note.key_id,
                user_id=note.user_id,
                error_code=_code_of(error),
                moderation_level=note.moderation_level,
                image_id=note.image_id,
            )
            try:
                await asyncio.to_thread(self._accounts.record, entry)
            except Exception:
                log.exception("could not write the audit row of request %s", request_id)


@dataclass
class AuditNote:
    """What a request learns about itself as it goes, for its audit row."""

    key_id: str | None = None
    user_id: str | None = None
    moderation_level: int | None = None
    image_id: str | None = None


def _code_of(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, CogserveError):
        return error.code
    return "499" if isinstance(error, asyncio.CancelledError) else "500"


def outcome_of(error: BaseException | None) -> AuditOutcome:
    if error is None:
        return "ok"
    if isinstance(error, AuthError):
        return "auth_failed"
    if isinstance(error, LimitExceeded):
        return "rate_limited"
    if isinstance(error, UserBlocked):
        return "blocked_user"
    if isinstance(error, ContentBlocked):
        return "moderation_block"
    return "error"
