"""``cogserve keys``, ``cogserve users`` and ``cogserve usage``: accounts, kept in the metadata DB.

They work on the database directly, so they run beside a live server (SQLite WAL allows it) and
take effect on its next request. Each migrates the database to the newest schema first, as the
server does on start.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cogserve.cli.options import (
    Create,
    DatabaseUrl,
    DataDir,
    build_settings,
    fail,
    open_database,
    storage_flags,
)
from cogserve.errors import InvalidField
from cogserve.settings import Settings

if TYPE_CHECKING:
    from cogserve.storage.accounts import AccountStore

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
users_app = typer.Typer(help="Block and unblock end users (the requests' user_id).", no_args_is_help=True)


@contextmanager
def _accounts(
    data_dir: Path | None, database_url: str | None, create: bool = False
) -> Iterator[tuple[Settings, AccountStore]]:
    """The settings and the account tables the storage options name, on a migrated database (a new
    SQLite file only with ``create``)."""
    from cogserve.storage.accounts import AccountStore

    settings = build_settings(storage=storage_flags(data_dir, database_url))
    with open_database(settings, create=create) as metadata:
        metadata.create_schema()
        yield settings, AccountStore(metadata.engine)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _limit(value: int | None) -> str:
    return "default" if value is None else ("unlimited" if value == 0 else str(value))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label to tell keys apart")] = "",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute (0: no limit; unset: default)")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight (0: no limit; unset: default)")
    ] = None,
    allow_no_watermark: Annotated[
        bool, typer.Option("--allow-no-watermark", help="Let this key send watermark_enabled=false")
    ] = False,
    loras: Annotated[
        str | None,
        typer.Option(
            "--loras",
            help="Comma-separated LoRA adapters this key may use, e.g. ink,watercolor (others: 403); "
            "unset: any the server serves",
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    create: Create = False,
) -> None:
    """Create a key and print it once: it cannot be shown again."""
    from cogserve.auth import ApiKeys, SecretBox
    from cogserve.service.access import server_key

    with _accounts(data_dir, database_url, create) as (settings, store):
        keys = ApiKeys(store, SecretBox(server_key(settings)))
        allowed = None if loras is None else [part.strip() for part in loras.split(",") if part.strip()]
        try:
            key, full = keys.create(
                name,
                rpm_limit=rpm,
                concurrency_limit=concurrency,
                allow_no_watermark=allow_no_watermark,
                loras=allowed,
            )
        except InvalidField as exc:
            fail(exc.message)
    typer.echo(full)
    typer.secho(
        f"created key {key.id} ({name or 'no name'}); store it now, it is not shown again",
        err=True,
        fg=typer.colors.GREEN,
    )


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List keys (never their secrets)."""
    with _accounts(data_dir, database_url) as (_, store):
        rows = store.list_keys()
    typer.echo(f"{'id':<24}  {'name':<16}  {'created':<20}  {'revoked':<20}  rpm / in flight  last used")
    for row in rows:
        typer.echo(
            f"{row.id:<24}  {row.name[:16]:<16}  {_when(row.created_at):<20}  {_when(row.revoked_at):<20}  "
            f"{_limit(row.rpm_limit)} / {_limit(row.concurrency_limit)}"
            f"{' (may disable watermark)' if row.allow_no_watermark else ''}"
            f"{'' if row.loras is None else ' (loras: ' + ', '.join(row.loras) + ')'}"
            f"  {_when(row.last_used_at)}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (the part before the dot)")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a key; its next request gets 401/1004."""
    with _accounts(data_dir, database_url) as (_, store):
        revoked = store.revoke_key(key_id)
    if not revoked:
        fail(f"no active key {key_id}")  # bad input: exit 2
    typer.echo(f"revoked {key_id}")


@users_app.command("block")
def users_block(
    user_id: Annotated[str, typer.Argument(help="The user_id the requests carry")],
    reason: Annotated[str, typer.Option(help="Shown to the client in the 403 message")] = "",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    create: Create = False,
) -> None:
    """Refuse every request carrying this user_id (403/1112), whichever key sends it.

    Matched as requests are: case, width, surrounding spaces and invisible characters aside."""
    from cogserve.auth.user_ids import match_key

    with _accounts(data_dir, database_url, create) as (_, store):
        store.block_user(match_key(user_id), reason)
    typer.echo(f"blocked {user_id}")


@users_app.command("unblock")
def users_unblock(
    user_id: Annotated[str, typer.Argument(help="A blocked user_id")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Let this user_id through again."""
    from cogserve.auth.user_ids import match_key

    with _accounts(data_dir, database_url) as (_, store):
        # The match key, and the id as typed for a block written before ids were matched so.
        unblocked = store.unblock_user(match_key(user_id)) | store.unblock_user(user_id)
    if not unblocked:
        fail(f"{user_id} was not blocked")  # bad input: exit 2
    typer.echo(f"unblocked {user_id}")


def usage(
    since: Annotated[
        str | None, typer.Option(help="ISO date or time (UTC), e.g. 2026-11-01 or 2026-11-25T08:00")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id")] = None,
    user: Annotated[
        str | None, typer.Option(help="Only this user_id (matched as blocks are: case, width, spaces aside)")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Requests per key and user, by outcome, from the audit log."""
    from cogserve.auth.user_ids import match_key
    from cogserve.logs import escape_controls

    start = None
    if since is not None:
        try:
            parsed = dt.datetime.fromisoformat(since)
        except ValueError:
            fail(f"--since {since!r} is not an ISO date or time")
        start = (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
    with _accounts(data_dir, database_url) as (_, store):
        rows = store.usage(since=start, key_id=key)
    if user is not None:
        # The audit keeps ids as sent; every spelling of this user is theirs.
        rows = [row for row in rows if row.user_id is not None and match_key(row.user_id) == match_key(user)]
    typer.echo(
        f"{'key':<24}  {'user_id':<20}  {'requests':>8}  {'ok':>6}  {'flagged':>7}  {'limited':>7}  "
        f"{'blocked':>7}  {'auth':>6}  {'errors':>6}  last"
    )
    for row in rows:
        typer.echo(
            # A client's id may hold terminal escapes: print them as text.
            f"{row.key_id or '(open)':<24}  {escape_controls(row.user_id or '-')[:20]:<20}  "
            f"{row.requests:>8}  {row.ok:>6}  "
            f"{row.blocked_by_moderation:>7}  {row.rate_limited:>7}  {row.blocked_user:>7}  "
            f"{row.auth_failed:>6}  {row.errors:>6}  {_when(row.last_at)}"
        )
