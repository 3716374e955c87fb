"""Fixtures for the auth tests: a real SQLite file, a server key, keys and a verifier over them;
limiters of every kind, and ``DatabaseLimiter``s on SQLite and on PostgreSQL (a fresh database on
the session's server; skipped, saying why, where no server can start)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from cogserve.auth import ApiKeys, SecretBox, TokenVerifier
from cogserve.storage.accounts import AccountStore
from tests.auth.limiters import KINDS, DatabaseLimiters, Limiters, MemoryLimiters
from tests.components.postgres import postgres_server  # noqa: F401  (the session's server fixture)


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


@contextlib.contextmanager
def _database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'limits.db'}"
        return
    with request.getfixturevalue("postgres_server").database() as url:
        yield url


@pytest.fixture(params=KINDS)
def limiters(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Limiters]:
    """Each kind of limiter in turn: in-process, and shared through SQLite and through PostgreSQL."""
    if request.param == "memory":
        yield MemoryLimiters()
        return
    with _database(request.param, request, tmp_path) as url:
        made = DatabaseLimiters(url)
        try:
            yield made
        finally:
            made.close()


@pytest.fixture(params=[kind for kind in KINDS if kind != "memory"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with _database(request.param, request, tmp_path) as url:
        yield url


@pytest.fixture
def make_limiter(database_url: str) -> Iterator[DatabaseLimiters]:
    """``make_limiter(**options)``: another ``DatabaseLimiter`` on this test's database."""
    made = DatabaseLimiters(database_url)
    try:
        yield made
    finally:
        made.close()
