"""``cogserve db``: the metadata database's schema, migrated with Alembic (``storage.migrate``).

The server and the other commands migrate to the newest schema themselves when they start; run
``db upgrade`` to do it ahead of a rollout (one step, before N new processes start), and
``db current`` to see where a database stands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from cogserve.errors import CogserveError
from cogserve.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

db_app = typer.Typer(help="Migrate the metadata database's schema.", no_args_is_help=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data dir holding the SQLite DB [COGSERVE_STORAGE__DATA_DIR]"),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host:5432/cogserve; overrides --data-dir "
        "[COGSERVE_STORAGE__DATABASE_URL]",
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def _explained(exc: CogserveError) -> str:
    """The error, with the driver's first line of why (an operator at a terminal needs it)."""
    cause = getattr(exc.__cause__, "orig", None) or exc.__cause__
    reason = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    return f"{exc.message}: {reason}" if reason and reason not in exc.message else exc.message


@contextmanager
def _database(data_dir: Path | None, database_url: str | None) -> Iterator[Engine]:
    from cogserve.storage import MetadataStore

    storage: dict[str, Any] = {}
    if data_dir is not None:
        storage["data_dir"] = data_dir
    if database_url:
        storage["database_url"] = database_url
    try:
        settings = Settings(storage=storage) if storage else Settings()
    except ValidationError as exc:
        raise _fail(str(exc.errors(include_url=False)[0]["msg"])) from None
    try:
        store = MetadataStore(settings.database_url)
    except CogserveError as exc:
        raise _fail(_explained(exc)) from None
    try:
        typer.echo(f"database: {store.engine.url.render_as_string(hide_password=True)}", err=True)
        yield store.engine
    except CogserveError as exc:
        raise _fail(_explained(exc)) from None
    finally:
        store.close()


@db_app.command("upgrade")
def upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Migrate the schema to the newest revision (from an empty database, or any earlier release)."""
    from cogserve.storage import migrate

    with _database(data_dir, database_url) as engine:
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
    from cogserve.storage.metadata import translated

    newest = migrate.head()
    with _database(data_dir, database_url) as engine:
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
