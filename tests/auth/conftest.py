"""Fixtures for the auth tests: a real SQLite file, a server key, keys and a verifier over them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from cogserve.auth import ApiKeys, SecretBox, TokenVerifier
from cogserve.storage.accounts import AccountStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cogserve.db"


@pytest.fixture
def engine(db_path: Path) -> Engine:
    return create_engine(f"sqlite:///{db_path}")


@pytest.fixture
def store(engine: Engine) -> AccountStore:
    accounts = AccountStore(engine)
    accounts.create_schema()
    return accounts


@pytest.fixture
def server_key() -> bytes:
    return bytes(range(32))


@pytest.fixture
def keys(store: AccountStore, server_key: bytes) -> ApiKeys:
    return ApiKeys(store, SecretBox(server_key))


@pytest.fixture
def verifier(keys: ApiKeys) -> TokenVerifier:
    return TokenVerifier(keys)
