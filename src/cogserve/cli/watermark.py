"""``cogserve verify-watermark``: read the invisible watermark and the Content Credentials back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cogserve.cli.options import EXIT_FAILED, build_settings, fail


def verify_watermark(
    image: Annotated[Path, typer.Argument(help="A PNG or JPEG cogserve made (or one to check)")],
    server_name: Annotated[
        str | None, typer.Option(help="Say whether it came from this server [COGSERVE_SAFETY__SERVER_NAME]")
    ] = None,
    trust_anchors: Annotated[
        Path | None,
        typer.Option(
            help="PEM file of CA certificates to trust when validating the Content Credentials (e.g. "
            "your signing CA); without it, a valid manifest from an unknown CA reads 'not on a trust list'"
        ),
    ] = None,
) -> None:
    """Read the invisible watermark and the C2PA Content Credentials back: which server and image id
    made this picture, and whether its signed manifest still matches its bytes.

    Exit code 0 when a watermark or a valid manifest was found and no manifest is invalid; 1 when
    neither was found, or the manifest does not validate (the image was changed after signing);
    2 when the image or the trust anchors cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    from cogserve.safety.credentials import describe_credentials, read_credentials
    from cogserve.safety.watermark import describe_watermark, read_watermark

    name = server_name or build_settings().safety.server_name
    anchors = None
    if trust_anchors is not None:
        try:
            anchors = trust_anchors.read_bytes()
        except OSError as exc:
            fail(f"cannot read {trust_anchors}: {exc}")
    try:
        data = image.read_bytes()
        with Image.open(image) as opened:
            opened.load()
            typer.echo(describe_watermark(opened, name))
            found = read_watermark(opened) is not None
    except (OSError, UnidentifiedImageError) as exc:
        fail(f"cannot read {image}: {exc}")
    credentials = read_credentials(data, trust_anchors=anchors)
    typer.echo(describe_credentials(credentials))
    if credentials is not None and not credentials.valid:
        raise typer.Exit(EXIT_FAILED)
    if not found and credentials is None:
        raise typer.Exit(EXIT_FAILED)
