"""The SQL database the stores share: its declarative ``Base``, the engine factory, its errors.

Every store in the metadata database (``metadata``, ``accounts``, ``jobs``, ``limits``) defines
its tables on ``Base`` and gets its engine from ``make_engine``, so SQLite connections are set up
the same way everywhere; ``migrate`` turns the tables into the schema. ``translated`` turns
SQLAlchemy's errors into cogserve's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import URL, Connection, Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase

from cogserve.errors import StorageError, StorageUnavailable

# How long a SQLite connection waits for another connection's write lock before it fails.
SQLITE_BUSY_MS = 5000


class Base(DeclarativeBase):
    """The tables of the metadata database; ``migrate.MODEL_MODULES`` lists the modules defining them."""


def make_engine(
    url: str | URL, *, immediate: bool = False, sqlite_busy_ms: int = SQLITE_BUSY_MS, **options: Any
) -> Engine:
    """An engine on ``url``; ``options`` go to SQLAlchemy's ``create_engine`` (pool, isolation level).

    On SQLite the database file's folder is created, and each new connection gets WAL (the sweeper
    and readers run beside a writer), ``synchronous=NORMAL`` and a busy timeout of
    ``sqlite_busy_ms`` (wait for a writer instead of failing). ``immediate`` makes each transaction
    begin with ``BEGIN IMMEDIATE``, so it holds the write lock from its first statement, reads
    included: for transactions that read, decide, then write, and that no other may interleave.
    Other backends get no hooks.

    Raises ``StorageError`` when the URL's driver is not installed.
    """
    url = make_url(url)
    on_sqlite = url.get_backend_name() == "sqlite"
    if on_sqlite and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sqlalchemy.create_engine(url, **options)
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"the driver for {url.drivername} is not installed (no module {exc.name!r}); "
            "for PostgreSQL install cogserve's postgres extra: pip install 'cogserve[postgres]'"
        ) from exc
    if on_sqlite:
        _sqlite_hooks(engine, immediate=immediate, busy_ms=sqlite_busy_ms)
    return engine


def _sqlite_hooks(engine: Engine, *, immediate: bool, busy_ms: int) -> None:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # The timeout first: turning a fresh file to WAL takes a lock another connection may hold.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        if immediate:
            # SQLAlchemy's recipe for pysqlite: stop the driver from issuing its own (deferred,
            # DML-only) BEGIN; ``_begin_immediate`` emits BEGIN IMMEDIATE instead.
            dbapi_connection.isolation_level = None

    event.listen(engine, "connect", on_connect)
    if immediate:
        event.listen(engine, "begin", _begin_immediate)


def _begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def translated(doing: str) -> Iterator[None]:
    """Turn database errors into ``StorageError`` saying what was being done.

    Errors of the connection rather than of the statement (server down or restarting, network cut,
    SQLite locked past busy_timeout, pool exhausted) become ``StorageUnavailable``: 503, retry.
    """
    try:
        yield
    except (OperationalError, DisconnectionError, PoolTimeout) as exc:
        raise StorageUnavailable(f"the database is unavailable, could not {doing}; retry shortly") from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"database error while trying to {doing}") from exc
