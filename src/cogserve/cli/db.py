"""``cogserve db`` (the metadata database's schema) and ``cogserve gc`` (expired images).

The schema is migrated with Alembic (``storage.migrate``). The server and the other commands
migrate to the newest schema themselves when they start; run ``db upgrade`` to do it ahead of a
rollout (one step, before N new processes start), and ``db current`` to see where a database stands.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cogserve.cli.options import (
    Create,
    DatabaseUrl,
    DataDir,
    ImageStore,
    S3EndpointUrl,
    build_settings,
    configure_process,
    missing_database,
    open_database,
    storage_flags,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

db_app = typer.Typer(help="Migrate the metadata database's schema.", no_args_is_help=True)


@contextmanager
def _database(data_dir: Path | None, database_url: str | None, create: bool) -> Iterator[Engine]:
    """The engine of the database the storage options name, as it is (not migrated)."""
    settings = build_settings(storage=storage_flags(data_dir, database_url))
    with open_database(settings, create=create) as store:
        yield store.engine


@db_app.command("upgrade")
def upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None, create: Create = False) -> None:
    """Migrate the schema to the newest revision (from an empty database, or any earlier release)."""
    from cogserve.storage import migrate

    with _database(data_dir, database_url, create) as engine:
        report = migrate.upgrade(engine)
    if report.adopted is not None:
        typer.echo(f"recognised the schema of revision {report.adopted} (made before migrations)")
    if report.changed:
        typer.echo(f"upgraded {report.before or report.adopted or 'an empty database'} -> {report.after}")
    else:
        typer.echo(f"already at {report.after}, the newest revision")


@db_app.command("current")
def current(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 unless at the newest revision")] = False,
) -> None:
    """Show the schema revision, and whether it is the newest."""
    from cogserve.storage import migrate
    from cogserve.storage.database import translated

    newest = migrate.head()
    missing = missing_database(build_settings(storage=storage_flags(data_dir, database_url)))
    if missing is not None:  # looking must not make the file
        typer.echo(f"none: no cogserve tables yet (no database at {missing}); newest is {newest}")
        if check:
            raise typer.Exit(1)
        return
    with _database(data_dir, database_url, create=False) as engine:
        revision = migrate.current(engine)
        legacy = None
        if revision is None:
            with translated("inspect the schema"), engine.connect() as connection:
                legacy = migrate.legacy_revision(connection)
    if revision == newest:
        typer.echo(f"{revision} (newest)")
        return
    advice = "run `cogserve db upgrade`"
    if revision is not None:
        typer.echo(f"{revision}; newest is {newest}: {advice}")
    elif legacy is not None:
        typer.echo(f"none: a schema from before migrations, that of {legacy}; newest is {newest}: {advice}")
    else:
        typer.echo(f"none: no cogserve tables yet; newest is {newest}: {advice}")
    if check:
        raise typer.Exit(1)


def gc(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    image_store: ImageStore = None,
    s3_endpoint_url: S3EndpointUrl = None,
) -> None:
    """Delete expired images (bytes and rows), and files a crash left behind."""
    from cogserve.storage import create_image_store
    from cogserve.storage.sweep import sweep

    settings = build_settings(storage=storage_flags(data_dir, database_url, image_store, s3_endpoint_url))
    configure_process(settings, "warning")
    started = time.perf_counter()
    with open_database(settings, create=False) as metadata:
        metadata.create_schema()
        report = sweep(create_image_store(settings), metadata)
    typer.echo(
        f"deleted {report.expired} expired images, {report.orphan_files} orphan files, "
        f"{report.temp_files} temp files in {time.perf_counter() - started:.2f} s"
    )
