"""The ``cogserve`` command: its typer ``app`` and ``main``, with every command attached.

Flags are optional overrides: a flag left out falls back to its ``COGSERVE_...`` environment
variable, then to the default in ``settings.py``.

- ``options``: the options commands share (storage, model) and Settings built from them;
- ``serve``, ``generate``, ``enhance``, ``watermark`` (``verify-watermark``), ``accounts`` (``keys``,
  ``users``, ``usage``), ``db`` (``db upgrade``, ``db current``, ``gc``), ``loras`` (``loras list``,
  ``loras make-test``): one module per command or group;
- ``remote``: the HTTP client behind ``generate --server``.
"""

from typing import Annotated

import typer

from cogserve import __version__
from cogserve.cli import accounts, db, enhance, generate, loras, serve, watermark

app = typer.Typer(
    help="Self-hosted CogView-4 image generation (BigModel-compatible API).\n\n"
    "Exit status: 0 done, 2 bad usage or input (a flag, a setting, a request the model cannot take), "
    "1 a failure while working (the model, a database, a disk, the server).",
    no_args_is_help=True,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"cogserve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit"),
    ] = False,
) -> None:
    """Self-hosted CogView-4 image generation (BigModel-compatible API)."""


app.command("serve")(serve.serve)
app.command("generate")(generate.generate)
app.command("enhance")(enhance.enhance)
app.command("verify-watermark")(watermark.verify_watermark)
app.command("gc")(db.gc)
app.command("usage")(accounts.usage)
app.add_typer(accounts.keys_app, name="keys")
app.add_typer(accounts.users_app, name="users")
app.add_typer(db.db_app, name="db")
app.add_typer(loras.loras_app, name="loras")


def main() -> None:
    """Run the ``cogserve`` command (the console script and ``python -m cogserve``)."""
    app()


__all__ = ["app", "main"]
