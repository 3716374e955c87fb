"""Alembic migrations of the metadata database, on a SQLite file and on a real PostgreSQL server.

The schemas of the releases from before migrations are frozen below as they were (each made by
``create_all``), not taken from today's models, so a change to a model cannot hide a change to
what an old database holds.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

import cogserve.storage.migrate as migration
from cogserve.errors import StorageError, StorageUnavailable
from cogserve.storage import MetadataStore
from cogserve.storage.database import make_engine
from cogserve.storage.migrate import LOCK_KEY, current, head, legacy_revision, models_metadata, upgrade
from tests.components.postgres import postgres_server  # noqa: F401  (the session's server fixture)

# -- the releases from before migrations, frozen -------------------------------------------------


def _images(metadata: MetaData) -> Table:
    return Table(
        "images",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("created_at", Float, nullable=False),
        Column("expires_at", Float, nullable=False, index=True),
        Column("model", String(128), nullable=False),
        Column("prompt", Text, nullable=False),
        Column("width", Integer, nullable=False),
        Column("height", Integer, nullable=False),
        Column("quality", String(16), nullable=False),
        Column("steps", Integer, nullable=False),
        Column("guidance_scale", Float, nullable=False),
        Column("seed", BigInteger, nullable=False),
        Column("user_id", String(128), index=True),
        Column("request_id", String(128), nullable=False, index=True),
        Column("duration_s", Float, nullable=False),
        Column("response_format", String(16), nullable=False),
        Column("user", String(256)),
        Column("style", String(64)),
        Column("sensitive_word_check", Text),
        Column("watermark_enabled", Boolean),
    )


def _accounts(metadata: MetaData) -> None:
    Table(
        "api_keys",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("name", String(128), nullable=False),
        Column("sealed_secret", LargeBinary, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("revoked_at", Float),
        Column("rpm_limit", Integer),
        Column("concurrency_limit", Integer),
        Column("allow_no_watermark", Boolean, nullable=False),
    )
    Table(
        "blocked_users",
        metadata,
        Column("user_id", String(128), primary_key=True),
        Column("reason", Text, nullable=False),
        Column("blocked_at", Float, nullable=False),
    )
    Table(
        "audit_log",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", Float, nullable=False, index=True),
        Column("key_id", String(64)),
        Column("user_id", String(128)),
        Column("request_id", String(128), nullable=False),
        Column("route", String(128), nullable=False),
        Column("outcome", String(32), nullable=False),
        Column("error_code", String(16)),
        Column("moderation_level", Integer),
        Column("duration_s", Float, nullable=False),
        Column("image_id", String(64)),
        Index("ix_audit_log_key_id_at", "key_id", "at"),
        Index("ix_audit_log_user_id_at", "user_id", "at"),
    )


def _jobs(metadata: MetaData) -> None:
    Table(
        "jobs",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("key_id", String(64), index=True),
        Column("request_id", String(128), nullable=False),
        Column("model", String(128), nullable=False),
        Column("user_id", String(128)),
        Column("status", String(16), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        Column("finished_at", Float, index=True),
        Column("spec", Text, nullable=False),
        Column("progress", Integer, nullable=False),
        Column("worker", String(64)),
        Column("lease_until", Float, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("image_id", String(64)),
        Column("image_created", BigInteger),
        Column("content_filter", Text),
        Column("error_code", String(16)),
        Column("error_message", Text),
        Column("webhook_url", Text),
        Column("webhook_state", String(16)),
        Column("webhook_attempts", Integer, nullable=False),
        Index("ix_jobs_status_lease", "status", "lease_until"),
    )


def release_schema(revision: str) -> MetaData:
    """The tables the release whose schema is ``revision`` made, as it made them."""
    metadata = MetaData()
    _images(metadata)
    if revision >= "0002":
        _accounts(metadata)
    if revision >= "0003":
        _jobs(metadata)
    return metadata


# One row per table, as each release wrote them (a watermark flag, a big seed, binary, floats).
ROWS: dict[str, dict[str, Any]] = {
    "images": {
        "id": "img-1",
        "created_at": 1700000000.25,
        "expires_at": 1702592000.5,
        "model": "cogview-4",
        "prompt": "a cute kitten, 猫",
        "width": 512,
        "height": 512,
        "quality": "standard",
        "steps": 20,
        "guidance_scale": 3.5,
        "seed": 2**53 + 7,
        "user_id": "user-1",
        "request_id": "req-1",
        "duration_s": 1.5,
        "response_format": "url",
        "user": None,
        "style": None,
        "sensitive_word_check": '{"type": "ALL", "status": "ENABLE"}',
        "watermark_enabled": True,
    },
    "api_keys": {
        "id": "key-1",
        "name": "ci",
        "sealed_secret": b"\x00\x01sealed\xff",
        "created_at": 1700000001.0,
        "revoked_at": None,
        "rpm_limit": 60,
        "concurrency_limit": None,
        "allow_no_watermark": False,
    },
    "blocked_users": {"user_id": "user-9", "reason": "abuse", "blocked_at": 1700000002.0},
    "audit_log": {
        "id": 1,
        "at": 1700000003.125,
        "key_id": "key-1",
        "user_id": "user-1",
        "request_id": "req-1",
        "route": "/api/paas/v4/images/generations",
        "outcome": "ok",
        "error_code": None,
        "moderation_level": 0,
        "duration_s": 1.5,
        "image_id": "img-1",
    },
    "jobs": {
        "id": "job-1",
        "key_id": "key-1",
        "request_id": "req-2",
        "model": "cogview-4",
        "user_id": None,
        "status": "success",
        "created_at": 1700000004.0,
        "updated_at": 1700000005.0,
        "finished_at": 1700000005.0,
        "spec": "{}",
        "progress": 100,
        "worker": "w-1",
        "lease_until": 0.0,
        "attempts": 1,
        "image_id": "img-1",
        "image_created": 1700000005,
        "content_filter": None,
        "error_code": None,
        "error_message": None,
        "webhook_url": None,
        "webhook_state": None,
        "webhook_attempts": 0,
    },
}

# The tables the releases from before migrations had.
ALL_TABLES = {"images", "api_keys", "blocked_users", "audit_log", "jobs"}


def head_tables() -> set[str]:
    """Every table of today's models, and Alembic's own."""
    return set(models_metadata().tables) | {"alembic_version"}


# -- backends ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cogserve.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    with server.database() as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def schema_diffs(engine: Engine) -> list[Any]:
    """How the database differs from today's models; a model changed without a revision shows here
    (write the revision: see ``cogserve.storage.migrate``)."""
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), models_metadata()))


def make_release(engine: Engine, revision: str) -> None:
    """A database as the release with ``revision``'s schema left it: its tables, one row in each."""
    metadata = release_schema(revision)
    metadata.create_all(engine)
    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            connection.execute(insert(table).values(ROWS[table.name]))


def rows(engine: Engine, names: set[str]) -> dict[str, list[dict[str, Any]]]:
    metadata = release_schema("0003")
    with engine.connect() as connection:
        return {
            name: [dict(row._mapping) for row in connection.execute(select(metadata.tables[name]))]
            for name in sorted(names)
        }


# -- tests ---------------------------------------------------------------------------------------


def test_an_empty_database_is_migrated_to_head(engine: Engine) -> None:
    report = upgrade(engine)
    assert (report.before, report.after, report.adopted) == (None, head(), None)
    assert tables(engine) == head_tables()
    assert current(engine) == head()


def test_the_migrated_schema_equals_the_models(engine: Engine) -> None:
    upgrade(engine)
    assert schema_diffs(engine) == []


@pytest.mark.parametrize("revision", ["0001", "0002", "0003"])
def test_a_database_of_an_earlier_release_is_upgraded_with_its_rows(engine: Engine, revision: str) -> None:
    make_release(engine, revision)
    before = rows(engine, set(release_schema(revision).tables))
    with engine.connect() as connection:
        assert legacy_revision(connection) == revision

    report = upgrade(engine)

    assert (report.before, report.adopted, report.after) == (None, revision, head())
    assert tables(engine) == head_tables()
    assert rows(engine, set(before)) == before
    assert schema_diffs(engine) == []


def test_rows_survive_through_the_app_after_upgrading_the_first_release(database_url: str) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    make_release(engine, "0001")
    engine.dispose()
    store = MetadataStore(database_url)
    try:
        store.create_schema()
        row = store.get("img-1")
        assert row is not None
        assert (row.seed, row.prompt, row.watermark_enabled) == (2**53 + 7, "a cute kitten, 猫", True)
        from cogserve.storage.accounts import AccountStore

        AccountStore(store.engine).block_user("user-2", "spam")  # the tables the upgrade added work
        assert AccountStore(store.engine).get_block("user-2") is not None
    finally:
        store.close()


def test_keys_of_earlier_releases_keep_every_adapter_after_0005(database_url: str) -> None:
    """0005 adds api_keys.loras: NULL for existing keys, so they may still use any adapter."""
    engine = create_engine(database_url, poolclass=NullPool)
    make_release(engine, "0003")
    engine.dispose()
    store = MetadataStore(database_url)
    try:
        store.create_schema()
        from cogserve.storage.accounts import AccountStore, ApiKeyRow

        accounts = AccountStore(store.engine)
        old = accounts.get_key("key-1")
        assert old is not None and old.loras is None and old.api_key().loras is None
        accounts.add_key(
            ApiKeyRow(
                id="key-2",
                name="ink only",
                sealed_secret=b"x",
                created_at=1.0,
                revoked_at=None,
                rpm_limit=None,
                concurrency_limit=None,
                allow_no_watermark=False,
                loras='["ink"]',
            )
        )
        limited = accounts.get_key("key-2")
        assert limited is not None and limited.api_key().loras == ("ink",)
    finally:
        store.close()


@pytest.mark.parametrize("start", [None, "0001", "0003"])
def test_upgrading_twice_changes_nothing(engine: Engine, start: str | None) -> None:
    if start is not None:
        make_release(engine, start)
    upgrade(engine)
    snapshot = (tables(engine), current(engine), rows(engine, ALL_TABLES))
    report = upgrade(engine)
    assert not report.changed
    assert (report.before, report.after) == (head(), head())
    assert (tables(engine), current(engine), rows(engine, ALL_TABLES)) == snapshot


def test_a_stepwise_upgrade_gets_the_same_schema(engine: Engine) -> None:
    assert upgrade(engine, to="0001").after == "0001"
    assert tables(engine) == {"images", "alembic_version"}
    assert upgrade(engine, to="0002").after == "0002"
    report = upgrade(engine)
    assert (report.before, report.after) == ("0002", head())
    assert schema_diffs(engine) == []


def test_other_applications_tables_are_left_alone(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)"))
    report = upgrade(engine)
    assert report.adopted is None
    assert "someone_elses" in tables(engine)


def test_a_schema_that_matches_no_release_is_refused_untouched(engine: Engine) -> None:
    metadata = release_schema("0003")
    metadata.tables["images"].create(engine)
    metadata.tables["jobs"].create(engine)  # no account tables: no release made this
    with pytest.raises(StorageError, match="match no release") as caught:
        upgrade(engine)
    assert "missing api_keys, audit_log, blocked_users" in caught.value.message
    assert tables(engine) == {"images", "jobs"}


def test_a_database_from_a_newer_release_is_refused(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    with pytest.raises(StorageError, match=r"revision 0999.*newer release"):
        upgrade(engine)


def test_a_failed_revision_leaves_the_schema_as_it_was(engine: Engine) -> None:
    make_release(engine, "0002")
    with engine.begin() as connection:  # in the way of revision 0003, which creates it
        connection.execute(text("CREATE INDEX ix_jobs_key_id ON images (model)"))
    with pytest.raises(StorageError, match="migrate"):
        upgrade(engine)
    assert current(engine) is None  # the stamp was rolled back with the rest
    assert "jobs" not in tables(engine)
    with engine.connect() as connection:
        assert legacy_revision(connection) == "0002"


RACER = """
import sys, time
from sqlalchemy import create_engine
from cogserve.storage.migrate import upgrade
engine = create_engine(sys.argv[1])
start_at = float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
print(upgrade(engine).changed)
"""


@pytest.mark.slow  # three fresh interpreters, let go together after 3 s: ~6 s per backend
def test_processes_starting_at_once_migrate_once(database_url: str) -> None:
    """Three processes start on one empty database at once: one migrates, the others find it done."""
    start_at = str(time.time() + 3.0)  # all imported by then, on a busy machine too
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, database_url, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [racer.communicate(timeout=120) for racer in racers]
    if any(racer.returncode for racer in racers):  # the whole traceback: an assert's repr cuts it
        pytest.fail("a racer failed:\n" + "\n".join(err for _, err in results if err))
    assert sorted(out.strip() for out, _ in results) == ["False", "False", "True"]
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        assert current(engine) == head()
        assert schema_diffs(engine) == []
    finally:
        engine.dispose()


@contextlib.contextmanager
def migration_lock_held(database_url: str) -> Iterator[None]:
    """Hold what ``upgrade`` waits for: the advisory lock, or SQLite's write lock."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
                connection.commit()
                yield
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                connection.commit()
            else:
                raw = connection.connection.driver_connection
                assert raw is not None
                raw.isolation_level = None
                raw.execute("PRAGMA journal_mode=WAL")  # as every cogserve process sets it
                raw.execute("BEGIN IMMEDIATE")
                yield
                raw.execute("COMMIT")
    finally:
        engine.dispose()


def test_an_upgrade_waits_for_the_one_in_progress(database_url: str) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    done = threading.Event()
    failures: list[BaseException] = []

    def migrate() -> None:
        try:
            upgrade(engine)
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    try:
        with migration_lock_held(database_url):
            waiter = threading.Thread(target=migrate)
            waiter.start()
            assert not done.wait(1.0), "upgrade ran while another process held the migration lock"
            assert "images" not in tables(engine)
        assert done.wait(60)
        waiter.join()
        assert failures == []
        assert current(engine) == head()
    finally:
        engine.dispose()


def refusing_begins(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make the migration's SQLite ``BEGIN`` fail at once with "database is locked" ``times`` times.

    SQLite answers so, without waiting out the busy timeout, where waiting could deadlock: when two
    connections turn a fresh file to WAL at the same moment, as processes starting together do.
    """
    refused: list[int] = []

    def make_refusing_engine(*args: Any, **kwargs: Any) -> Engine:
        writer = make_engine(*args, **kwargs)

        def refuse(_connection: Connection) -> None:
            if len(refused) < times:
                refused.append(1)
                locked = sqlite3.OperationalError("database is locked")
                raise OperationalError("BEGIN IMMEDIATE", None, locked)  # as the driver's is raised

        event.listen(writer, "begin", refuse, insert=True)
        return writer

    monkeypatch.setattr(migration, "make_engine", make_refusing_engine)
    return refused


def test_a_lock_refused_at_once_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = refusing_begins(monkeypatch, times=3)
    engine = create_engine(f"sqlite:///{tmp_path}/cogserve.db", poolclass=NullPool)
    try:
        assert upgrade(engine).changed
        assert len(refused) == 3
        assert current(engine) == head()
    finally:
        engine.dispose()


def test_a_lock_refused_past_the_wait_is_reported_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing_begins(monkeypatch, times=10**6)
    monkeypatch.setattr(migration, "SQLITE_BUSY_MS", 300)
    engine = create_engine(f"sqlite:///{tmp_path}/cogserve.db", poolclass=NullPool)
    try:
        with pytest.raises(StorageUnavailable, match="could not lock the schema for migration"):
            upgrade(engine)
        assert current(engine) is None
    finally:
        engine.dispose()


def test_create_schema_migrates(database_url: str) -> None:
    store = MetadataStore(database_url)
    try:
        store.create_schema()
        assert current(store.engine) == head()
    finally:
        store.close()


def test_migrations_need_neither_the_working_directory_nor_an_ini(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        assert upgrade(engine).after == head()
    finally:
        engine.dispose()
    assert list(elsewhere.iterdir()) == []
