"""Every API test that builds settings runs twice: metadata in SQLite, then in PostgreSQL.

The PostgreSQL run is marked ``slow``: it is the whole API suite a second time (~5 min on 2 cores),
so the fast tier (``-m "not slow"``) runs each API test once, on SQLite. PostgreSQL's own SQL stays
in the fast tier through tests/storage (migrations) and tests/auth (the shared limiter).

``make_settings`` (tests/conftest.py) is wrapped so the settings name the backend's database: no
URL for SQLite (the file in the test's data dir, as before), a fresh database on the session's
PostgreSQL server for PostgreSQL (created for the test, dropped after it). Without PostgreSQL
binaries or psycopg the ``[postgresql]`` variants skip, saying which is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cogserve.engine import Engine
from cogserve.settings import Settings
from tests.components.chat import chat_server  # noqa: F401  (a loopback enhancer, for tests that ask)
from tests.components.postgres import postgres_server  # noqa: F401  (the session's server fixture)
from tests.helpers import CountingEngine

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The metadata database's URL for this test; None: the default SQLite file."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    with server.database() as url:
        yield url


@pytest.fixture
def make_settings(
    make_settings: Callable[..., Settings], database_url: str | None
) -> Callable[..., Settings]:
    if database_url is None:
        return make_settings

    def make(**areas: dict[str, Any]) -> Settings:
        storage = {"database_url": database_url, **areas.pop("storage", {})}
        return make_settings(storage=storage, **areas)

    return make


@pytest.fixture
def counting(shared_engine: Engine) -> CountingEngine:
    return CountingEngine(shared_engine)
