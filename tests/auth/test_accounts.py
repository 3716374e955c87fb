"""AccountStore: keys, blocked users and the audit log in a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine

from cogserve.auth import ApiKeys
from cogserve.errors import InvalidField, StorageError
from cogserve.storage import MetadataStore
from cogserve.storage.accounts import AccountStore, AuditEntry


def test_keys_are_listed_without_secrets_and_revoked_once(keys: ApiKeys, store: AccountStore) -> None:
    alice, _ = keys.create("alice", rpm_limit=10, allow_no_watermark=True)
    bob, _ = keys.create("bob", concurrency_limit=0)
    listed = {summary.id: summary for summary in store.list_keys()}
    assert listed[alice.id].name == "alice" and listed[alice.id].rpm_limit == 10
    assert listed[alice.id].allow_no_watermark and not listed[bob.id].allow_no_watermark
    assert listed[bob.id].concurrency_limit == 0 and listed[bob.id].rpm_limit is None
    assert not hasattr(listed[alice.id], "sealed_secret")

    assert store.revoke_key(bob.id, at=123.0)
    assert not store.revoke_key(bob.id)  # already revoked: the first revocation time stays
    assert not store.revoke_key("no-such-key")
    revoked = store.get_key(bob.id)
    assert revoked is not None and revoked.revoked_at == 123.0
    assert [s.revoked_at for s in store.list_keys() if s.id == alice.id] == [None]


def test_revoking_the_last_key_does_not_reopen_the_server(keys: ApiKeys, store: AccountStore) -> None:
    assert not store.has_keys()
    key, _ = keys.create()
    assert store.has_keys()
    store.revoke_key(key.id)
    assert store.has_keys()


def test_key_ids_and_secrets_fit_the_sdks_split_on_a_dot(keys: ApiKeys) -> None:
    made = {keys.create()[1] for _ in range(20)}
    assert len(made) == 20
    for full in made:
        key_id, secret = full.split(".")  # exactly what zhipuai does; more dots would break it
        assert len(key_id) == 24 and len(secret) >= 22  # >= 128 bits of URL-safe base64


def test_bad_key_settings_are_refused(keys: ApiKeys, store: AccountStore) -> None:
    with pytest.raises(InvalidField, match="rpm_limit"):
        keys.create(rpm_limit=-1)
    with pytest.raises(InvalidField, match="name"):
        keys.create("x" * 129)
    assert not store.has_keys()


def test_blocking_unblocking_and_reblocking_users(store: AccountStore) -> None:
    assert store.get_block("user-1") is None
    store.block_user("user-1", "spam", at=1.0)
    store.block_user("user-1", "abuse", at=2.0)  # again: the newer reason wins
    block = store.get_block("user-1")
    assert block is not None and (block.reason, block.blocked_at) == ("abuse", 2.0)
    store.block_user("user-2")
    assert [b.user_id for b in store.list_blocks()] == ["user-1", "user-2"]
    assert store.unblock_user("user-1")
    assert not store.unblock_user("user-1")
    assert store.get_block("user-1") is None


def _entry(outcome: str, at: float, key_id: str | None = "k1", user_id: str | None = "u1") -> AuditEntry:
    return AuditEntry(
        request_id=f"req-{at}",
        route="/api/paas/v4/images/generations",
        outcome=outcome,  # type: ignore[arg-type]
        duration_s=0.5,
        key_id=key_id,
        user_id=user_id,
        at=at,
    )


def test_usage_counts_each_outcome_per_key_and_user(store: AccountStore) -> None:
    outcomes = ["ok", "ok", "ok", "moderation_block", "rate_limited", "blocked_user", "error", "auth_failed"]
    for at, outcome in enumerate(outcomes, start=100):
        store.record(_entry(outcome, float(at)))
    store.record(_entry("ok", 200.0, user_id=None))
    store.record(_entry("ok", 300.0, key_id="k2", user_id="u1"))

    rows = store.usage()
    assert [(r.key_id, r.user_id, r.requests) for r in rows] == [
        ("k1", "u1", 8),
        ("k1", None, 1),
        ("k2", "u1", 1),
    ]
    top = rows[0]
    assert (top.ok, top.blocked_by_moderation, top.rate_limited) == (3, 1, 1)
    assert (top.blocked_user, top.auth_failed, top.errors) == (1, 1, 1)
    assert top.last_at == 107.0

    assert [r.requests for r in store.usage(since=104.0)] == [4, 1, 1]
    assert [(r.key_id, r.user_id) for r in store.usage(user_id="u1")] == [("k1", "u1"), ("k2", "u1")]
    assert [r.requests for r in store.usage(key_id="k2")] == [1]
    assert store.usage(since=1000.0) == []


def test_last_used_comes_from_successful_requests_not_failed_logins(
    keys: ApiKeys, store: AccountStore
) -> None:
    key, _ = keys.create()
    store.record(_entry("ok", 50.0, key_id=key.id))
    store.record(_entry("auth_failed", 60.0, key_id=key.id))
    assert [s.last_used_at for s in store.list_keys()] == [50.0]


def test_the_metadata_schema_makes_the_account_tables_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/meta.db"
    MetadataStore(url).create_schema()
    accounts = AccountStore(create_engine(url))
    accounts.block_user("user-1")
    assert accounts.get_block("user-1") is not None


def test_database_failures_become_storage_errors(tmp_path: Path) -> None:
    accounts = AccountStore(create_engine(f"sqlite:///{tmp_path}/empty.db"))  # no schema created
    with pytest.raises(StorageError, match="write the audit log"):
        accounts.record(_entry("ok", 1.0))
    with pytest.raises(StorageError, match="API key"):
        accounts.has_keys()
