"""``cogserve db upgrade`` and ``cogserve db current``, on a data dir's SQLite file and by URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, create_engine
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from cogserve.cli.db import db_app
from cogserve.storage.migrate import head
from tests.components.postgres import postgres_server  # noqa: F401  (the session's server fixture)
from tests.storage.test_migrations import release_schema

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[list[str], str]]:
    """The flags naming a database, and its URL."""
    if request.param == "sqlite":
        data = tmp_path / "data"
        yield ["--data-dir", str(data)], f"sqlite:///{(data / 'cogserve.db').resolve()}"
        return
    server = request.getfixturevalue("postgres_server")
    with server.database() as url:
        yield ["--database-url", url], url


def test_upgrade_then_current(target: tuple[list[str], str]) -> None:
    flags, _ = target
    before = runner.invoke(db_app, ["current", "--check", *flags])
    assert before.exit_code == 1
    assert "none: no cogserve tables yet" in before.stdout

    upgraded = runner.invoke(db_app, ["upgrade", "--create", *flags])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"upgraded an empty database -> {head()}" in upgraded.stdout

    again = runner.invoke(db_app, ["upgrade", *flags])
    assert again.exit_code == 0, again.output
    assert f"already at {head()}" in again.stdout

    after = runner.invoke(db_app, ["current", "--check", *flags])
    assert after.exit_code == 0, after.output
    assert after.stdout.strip() == f"{head()} (newest)"


def test_a_database_from_before_migrations_is_recognised(target: tuple[list[str], str]) -> None:
    flags, url = target
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(url, poolclass=NullPool)
    release_schema("0002").create_all(engine)
    engine.dispose()

    shown = runner.invoke(db_app, ["current", *flags])
    assert shown.exit_code == 0, shown.output
    assert "a schema from before migrations, that of 0002" in shown.stdout

    upgraded = runner.invoke(db_app, ["upgrade", *flags])
    assert upgraded.exit_code == 0, upgraded.output
    assert "recognised the schema of revision 0002" in upgraded.stdout
    assert f"upgraded 0002 -> {head()}" in upgraded.stdout
    engine = create_engine(url, poolclass=NullPool)
    try:
        Table("jobs", MetaData(), autoload_with=engine)
    finally:
        engine.dispose()


def test_an_unreachable_database_is_an_error_not_a_traceback() -> None:
    result = runner.invoke(db_app, ["current", "--database-url", "postgresql+psycopg://nobody@127.0.0.1:1/x"])
    assert result.exit_code == 1
    assert "error: the database is unavailable, could not read the schema revision" in result.output
    assert "Traceback" not in result.output


def test_the_password_is_not_printed() -> None:
    url = "postgresql+psycopg://cog:s3cret@127.0.0.1:1/x"
    result = runner.invoke(db_app, ["upgrade", "--database-url", url])
    assert result.exit_code == 1
    assert "s3cret" not in result.output
