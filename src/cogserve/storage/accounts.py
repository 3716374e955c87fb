"""API keys, blocked end users and the audit log, in the metadata database.

The tables share ``database.Base`` with the image metadata; migrations (``storage.migrate``) make
them, through ``MetadataStore.create_schema`` or ``AccountStore.create_schema``. Key secrets arrive
here already sealed (``cogserve.auth.crypto``): this module never sees a usable key. A key's row
reads back as auth's ``ApiKey`` (``ApiKeyRow.api_key``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    case,
    func,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from cogserve.auth.identity import ApiKey
from cogserve.storage.database import Base, translated

AuditOutcome = Literal["ok", "moderation_block", "auth_failed", "rate_limited", "blocked_user", "error"]


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)
    # None: the server's default limit applies.
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    # Whether requests with this key may turn the watermark off (watermark_enabled=false).
    allow_no_watermark: Mapped[bool] = mapped_column(Boolean, default=False)
    # The LoRA adapters this key may use, a JSON list of names; None: any the server serves.
    loras: Mapped[str | None] = mapped_column(Text, default=None)

    def api_key(self) -> ApiKey:
        """The key as requests see it: everything but the sealed secret."""
        return ApiKey(
            id=self.id,
            name=self.name,
            created_at=self.created_at,
            revoked_at=self.revoked_at,
            rpm_limit=self.rpm_limit,
            concurrency_limit=self.concurrency_limit,
            allow_no_watermark=self.allow_no_watermark,
            loras=None if self.loras is None else tuple(json.loads(self.loras)),
        )


class BlockedUserRow(Base):
    __tablename__ = "blocked_users"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    blocked_at: Mapped[float] = mapped_column(Float)


class AuditRow(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_key_id_at", "key_id", "at"),
        Index("ix_audit_log_user_id_at", "user_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    # Not a foreign key: failed authentications are recorded with whatever id they claimed, or None.
    key_id: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(128))
    request_id: Mapped[str] = mapped_column(String(128))
    route: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(16))
    moderation_level: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    image_id: Mapped[str | None] = mapped_column(String(64))


@dataclass(frozen=True)
class AuditEntry:
    """One request as the audit log keeps it; ``at`` defaults to the time it is recorded."""

    request_id: str
    route: str
    outcome: AuditOutcome
    duration_s: float
    key_id: str | None = None
    user_id: str | None = None
    error_code: str | None = None
    moderation_level: int | None = None
    image_id: str | None = None
    at: float | None = None


@dataclass(frozen=True)
class KeySummary(ApiKey):
    """A key as ``cogserve keys list`` shows it: everything but the secret, and when it was last used."""

    last_used_at: float | None = None


@dataclass(frozen=True)
class Usage:
    """Requests of one (key, end user) pair, in total and per outcome."""

    key_id: str | None
    user_id: str | None
    requests: int
    ok: int
    blocked_by_moderation: int
    rate_limited: int
    blocked_user: int
    auth_failed: int
    errors: int
    last_at: float


class AccountStore:
    """Keys, blocks and audit rows over the engine the ``MetadataStore`` uses (or any other)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Migrate the database to the current schema (every table: see ``storage.migrate``)."""
        # Imported when migrating: Alembic takes longer to import than everything else here.
        from cogserve.storage.migrate import upgrade

        upgrade(self._engine)

    # -- keys --------------------------------------------------------------------------------------

    def add_key(self, row: ApiKeyRow) -> None:
        with translated("store the API key"), self._sessions.begin() as session:
            session.add(row)

    def get_key(self, key_id: str) -> ApiKeyRow | None:
        with translated("read the API key"), self._sessions() as session:
            return session.get(ApiKeyRow, key_id)

    def list_keys(self) -> list[KeySummary]:
        last_used = (
            select(AuditRow.key_id, func.max(AuditRow.at).label("last"))
            .where(AuditRow.outcome != "auth_failed")
            .group_by(AuditRow.key_id)
            .subquery()
        )
        query = (
            select(ApiKeyRow, last_used.c.last)
            .outerjoin(last_used, last_used.c.key_id == ApiKeyRow.id)
            .order_by(ApiKeyRow.created_at)
        )
        with translated("list API keys"), self._sessions() as session:
            return [
                KeySummary(**vars(row.api_key()), last_used_at=last) for row, last in session.execute(query)
            ]

    def revoke_key(self, key_id: str, *, at: float | None = None) -> bool:
        """Revoke at once; True if the key existed and was active, False otherwise (idempotent)."""
        with translated("revoke the API key"), self._sessions.begin() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = time.time() if at is None else at
            return True

    def has_keys(self) -> bool:
        """Whether any key was ever created. Revoked keys count, so revoking the last key never
        reopens a server that runs in open mode only while it has no keys."""
        with translated("look for API keys"), self._sessions() as session:
            return session.scalars(select(ApiKeyRow.id).limit(1)).first() is not None

    # -- blocked end users -------------------------------------------------------------------------

    def block_user(self, user_id: str, reason: str = "", *, at: float | None = None) -> None:
        """Block an end user; blocking again replaces the reason and the time."""
        with translated("block the user"), self._sessions.begin() as session:
            session.merge(
                BlockedUserRow(user_id=user_id, reason=reason, blocked_at=time.time() if at is None else at)
            )

    def unblock_user(self, user_id: str) -> bool:
        """True if the user was blocked."""
        with translated("unblock the user"), self._sessions.begin() as session:
            row = session.get(BlockedUserRow, user_id)
            if row is None:
                return False
            session.delete(row)
            return True

    def get_block(self, user_id: str) -> BlockedUserRow | None:
        with translated("look up the user block"), self._sessions() as session:
            return session.get(BlockedUserRow, user_id)

    def list_blocks(self) -> list[BlockedUserRow]:
        with translated("list blocked users"), self._sessions() as session:
            return list(session.scalars(select(BlockedUserRow).order_by(BlockedUserRow.blocked_at)))

    # -- audit -------------------------------------------------------------------------------------

    def record(self, entry: AuditEntry) -> None:
        row = AuditRow(
            at=time.time() if entry.at is None else entry.at,
            key_id=entry.key_id,
            user_id=entry.user_id,
            request_id=entry.request_id,
            route=entry.route,
            outcome=entry.outcome,
            error_code=entry.error_code,
            moderation_level=entry.moderation_level,
            duration_s=entry.duration_s,
            image_id=entry.image_id,
        )
        with translated("write the audit log"), self._sessions.begin() as session:
            session.add(row)

    def usage(
        self, since: float | None = None, key_id: str | None = None, user_id: str | None = None
    ) -> list[Usage]:
        """Requests per (key, end user) since a time, busiest first; filters are ANDed."""

        def count(outcome: AuditOutcome) -> ColumnElement[int]:
            return func.coalesce(func.sum(case((AuditRow.outcome == outcome, 1), else_=0)), 0)

        query = select(
            AuditRow.key_id,
            AuditRow.user_id,
            func.count(),
            count("ok"),
            count("moderation_block"),
            count("rate_limited"),
            count("blocked_user"),
            count("auth_failed"),
            count("error"),
            func.max(AuditRow.at),
        ).group_by(AuditRow.key_id, AuditRow.user_id)
        if since is not None:
            query = query.where(AuditRow.at >= since)
        if key_id is not None:
            query = query.where(AuditRow.key_id == key_id)
        if user_id is not None:
            query = query.where(AuditRow.user_id == user_id)
        # NULLs first on every backend (SQLite and PostgreSQL disagree by default).
        query = query.order_by(
            func.count().desc(), AuditRow.key_id.nulls_first(), AuditRow.user_id.nulls_first()
        )
        with translated("summarise usage"), self._sessions() as session:
            return [
                Usage(
                    key_id=row[0],
                    user_id=row[1],
                    requests=row[2],
                    ok=row[3],
                    blocked_by_moderation=row[4],
                    rate_limited=row[5],
                    blocked_user=row[6],
                    auth_failed=row[7],
                    errors=row[8],
                    last_at=row[9],
                )
                for row in session.execute(query)
            ]
