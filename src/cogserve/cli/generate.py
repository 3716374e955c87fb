"""``cogserve generate``: one image, in this process or on a running server (``--server``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from cogserve.cli.options import (
    EXIT_FAILED,
    AllowDownload,
    Builtin,
    DataDir,
    Device,
    DType,
    ModelPath,
    build_settings,
    configure_process,
    fail,
)
from cogserve.errors import CogserveError, PromptTooLong


def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw")],
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT, within BigModel's size rules")] = "1024x1024",
    quality: Annotated[str, typer.Option(help="standard | hd")] = "standard",
    seed: Annotated[int | None, typer.Option(help="Same seed -> same image")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="PNG to write")] = None,
    data_dir: DataDir = None,
    model_path: ModelPath = None,
    builtin: Builtin = None,
    allow_download: AllowDownload = None,
    device: Device = None,
    dtype: DType = None,
    server: Annotated[
        str | None,
        typer.Option(help="Generate on this cogserve server (async API), e.g. http://127.0.0.1:8000"),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=["COGSERVE_API_KEY", "ZHIPUAI_API_KEY"],
            show_envvar=True,
            help="API key for --server (open servers need none)",
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="Model code to ask --server for")] = "cogview-4",
    timeout: Annotated[
        float, typer.Option(min=0.1, help="With --server: seconds before giving up (and cancelling)")
    ] = 600.0,
    poll_interval: Annotated[
        float, typer.Option(min=0.05, help="With --server: seconds between progress polls")
    ] = 0.5,
) -> None:
    """Generate one image: in this process, or on a server with --server; with a progress bar."""
    if server is not None:
        _generate_on_server(
            server,
            prompt=prompt,
            model=model,
            size=size,
            quality=quality,
            seed=seed,
            output=output,
            api_key=api_key or None,
            timeout=timeout,
            poll_interval=poll_interval,
        )
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cogserve.api.protocol import ImageGenerationRequest, validation_error
    from cogserve.engine import create_engine, generate_one
    from cogserve.engine.prompt_tokens import check_prompt_tokens
    from cogserve.safety import encode_png
    from cogserve.storage.files import atomic_write

    settings = build_settings(
        model={
            "path": model_path,
            "builtin": builtin,
            "allow_download": allow_download,
            "device": device,
            "dtype": dtype,
        },
        storage={"data_dir": data_dir},
    )
    configure_process(settings, "warning")
    try:
        request = ImageGenerationRequest.model_validate(
            {
                "model": settings.model.codes[0],
                "prompt": prompt,
                "size": size,
                "quality": quality,
                "seed": seed,
            }
        )
    except ValidationError as exc:
        fail(validation_error(exc).message)
    try:
        params = request.to_request(settings.model, request_id="cli").params
        engine = create_engine(settings)
        engine.load()
        try:
            check_prompt_tokens(engine.count_prompt_tokens(prompt), engine.info.max_prompt_tokens)
        except PromptTooLong as exc:
            fail(exc.message)  # bad input, like a bad size: exit 2
        with Progress(
            TextColumn("denoising"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),  # progress on stderr, as with --server: stdout is the result
        ) as progress:
            task = progress.add_task("denoising", total=params.steps)
            result = generate_one(
                engine, params, on_progress=lambda done, total: progress.update(task, completed=done)
            )
        target = output or Path(f"cogserve-{params.seed}.png")
        atomic_write(target, encode_png(result.image))
    except CogserveError as exc:
        fail(exc.message, code=EXIT_FAILED)
    except OSError as exc:
        fail(f"could not write the image: {exc}", code=EXIT_FAILED)
    typer.echo(
        f"wrote {target} ({params.width}x{params.height}, seed {params.seed}, {result.elapsed_s:.2f} s)"
    )


def _generate_on_server(
    server: str,
    *,
    prompt: str,
    model: str,
    size: str,
    quality: str,
    seed: int | None,
    output: Path | None,
    api_key: str | None,
    timeout: float,
    poll_interval: float,
) -> None:
    """``generate --server``: the remote client, its failures turned into messages and exit codes."""
    from cogserve.cli.remote import RemoteCancelled, RemoteError, RemoteRequest, generate_remote

    wanted = RemoteRequest(prompt=prompt, model=model, size=size, quality=quality, seed=seed)
    try:
        generate_remote(
            server,
            wanted,
            output=output,
            api_key=api_key,
            timeout=timeout,
            poll_interval=poll_interval,
            echo=typer.echo,
        )
    except RemoteCancelled as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(exc.exit_code) from None
    except RemoteError as exc:
        typer.secho(exc.message, err=True, fg=typer.colors.RED)
        raise typer.Exit(exc.exit_code) from None
