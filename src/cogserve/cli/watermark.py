"""``cogserve verify-watermark``: read the invisible watermark back from an image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cogserve.cli.options import build_settings, fail


def verify_watermark(
    image: Annotated[Path, typer.Argument(help="A PNG or JPEG cogserve made (or one to check)")],
    server_name: Annotated[
        str | None, typer.Option(help="Say whether it came from this server [COGSERVE_SAFETY__SERVER_NAME]")
    ] = None,
) -> None:
    """Read the invisible watermark back: which server and image id made this picture.

    Exit code 0 when a watermark was found, 1 when none was.
    """
    from PIL import Image, UnidentifiedImageError

    from cogserve.safety.watermark import describe_watermark, read_watermark

    name = server_name or build_settings().safety.server_name
    try:
        with Image.open(image) as opened:
            opened.load()
            typer.echo(describe_watermark(opened, name))
            found = read_watermark(opened) is not None
    except (OSError, UnidentifiedImageError) as exc:
        fail(f"cannot read {image}: {exc}")
    if not found:
        raise typer.Exit(1)
