"""The ``cogserve`` command: serve, generate, gc.

Flags are optional overrides: a flag left out falls back to its ``COGSERVE_...`` environment
variable, then to the default in ``settings.py``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from cogserve.cli_accounts import keys_app, usage, users_app
from cogserve.cli_db import db_app
from cogserve.errors import CogserveError
from cogserve.logs import configure_logging
from cogserve.settings import Settings

app = typer.Typer(
    help="Self-hosted CogView-4 image generation (BigModel-compatible API).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")
app.add_typer(db_app, name="db")
app.command("usage")(usage)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Images, metadata DB, built-in model [COGSERVE_STORAGE__DATA_DIR]"),
]
ModelPath = Annotated[
    str | None,
    typer.Option("--model-path", help="CogView4 diffusers folder or cached repo id [COGSERVE_MODEL__PATH]"),
]
Builtin = Annotated[
    str | None,
    typer.Option(
        "--builtin",
        help="Built-in model when no --model-path: shapes (trained; draws flat shapes) | tiny-random "
        "(noise; for tests) [COGSERVE_MODEL__BUILTIN]",
    ),
]
AllowDownload = Annotated[
    bool | None,
    typer.Option(
        "--allow-download/--no-download", help="Let a repo id be downloaded [COGSERVE_MODEL__ALLOW_DOWNLOAD]"
    ),
]
Device = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N [COGSERVE_MODEL__DEVICE]")
]
DType = Annotated[str | None, typer.Option("--dtype", help="auto | bf16 | fp32 [COGSERVE_MODEL__DTYPE]")]
Offload = Annotated[
    str | None,
    typer.Option(help="none | model | sequential: CPU offload, CUDA only [COGSERVE_MODEL__OFFLOAD]"),
]
VaeTiling = Annotated[
    bool | None,
    typer.Option("--vae-tiling/--no-vae-tiling", help="Tiled VAE decode [COGSERVE_MODEL__VAE_TILING]"),
]
TextEncoderQuant = Annotated[
    str | None,
    typer.Option(help="none | int8 (torchao) | nf4 (CUDA) [COGSERVE_MODEL__TEXT_ENCODER_QUANT]"),
]
Compile = Annotated[
    bool | None,
    typer.Option("--compile/--no-compile", help="torch.compile the transformer [COGSERVE_MODEL__COMPILE]"),
]
StepCache = Annotated[
    str | None, typer.Option(help="none | fbc:<threshold> First Block Cache [COGSERVE_MODEL__STEP_CACHE]")
]


def _mode_flags(
    dtype: str | None,
    offload: str | None,
    vae_tiling: bool | None,
    text_encoder_quant: str | None,
    compile: bool | None,
    step_cache: str | None,
) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "offload": offload,
        "vae_tiling": vae_tiling,
        "text_encoder_quant": text_encoder_quant,
        "compile": compile,
        "step_cache": step_cache,
    }


def _settings(**areas: dict[str, Any]) -> Settings:
    """Settings from env and defaults, with the flags that were given laid on top."""
    overrides: dict[str, Any] = {
        area: {key: value for key, value in values.items() if value is not None}
        for area, values in areas.items()
    }
    try:
        return Settings(**{area: values for area, values in overrides.items() if values})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        _fail(f"invalid setting {where}: {str(first['msg']).removeprefix('Value error, ')}")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _configure(settings: Settings, log_level: str) -> None:
    configure_logging(log_level, settings.server.log_format)
    # The server never reaches the hub at run time unless told to.
    if not settings.model.allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [COGSERVE_SERVER__HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [COGSERVE_SERVER__PORT]")] = None,
    data_dir: DataDir = None,
    model_path: ModelPath = None,
    builtin: Builtin = None,
    public_url: Annotated[
        str | None, typer.Option(help="Base URL of image links [COGSERVE_SERVER__PUBLIC_URL]")
    ] = None,
    allow_download: AllowDownload = None,
    device: Device = None,
    dtype: DType = None,
    offload: Offload = None,
    vae_tiling: VaeTiling = None,
    text_encoder_quant: TextEncoderQuant = None,
    compile: Compile = None,
    step_cache: StepCache = None,
    warmup_sizes: Annotated[
        str | None,
        typer.Option(help="Warm before ready: 1024x1024:20,512x512 [COGSERVE_MODEL__WARMUP_SIZES]"),
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Waiting requests before 429 [COGSERVE_SCHEDULER__MAX_QUEUE]")
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Images per pipeline call [COGSERVE_SCHEDULER__MAX_BATCH_SIZE]")
    ] = None,
    max_batch_wait_ms: Annotated[
        float | None,
        typer.Option(help="Longest wait for batch company [COGSERVE_SCHEDULER__MAX_BATCH_WAIT_MS]"),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds before a request times out [COGSERVE_SCHEDULER__REQUEST_TIMEOUT_S]"),
    ] = None,
    require_auth: Annotated[
        bool | None,
        typer.Option(
            "--require-auth/--no-require-auth", help="Refuse keyless requests [COGSERVE_AUTH__REQUIRE_AUTH]"
        ),
    ] = None,
    moderation_policy: Annotated[
        Path | None, typer.Option(help="Moderation policy TOML [COGSERVE_SAFETY__MODERATION_POLICY]")
    ] = None,
    image_checker: Annotated[
        str | None, typer.Option(help="none | nudenet [COGSERVE_SAFETY__IMAGE_CHECKER]")
    ] = None,
    job_timeout: Annotated[
        float | None, typer.Option(help="Seconds an async job may take [COGSERVE_JOBS__TIMEOUT_S]")
    ] = None,
    webhook_allow: Annotated[
        str | None,
        typer.Option(
            help="Hosts webhooks may go to: a.example,b.example:8443 [COGSERVE_JOBS__WEBHOOK_ALLOW]"
        ),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text | json (one object per line) [COGSERVE_SERVER__LOG_FORMAT]")
    ] = None,
    cors_allow_origins: Annotated[
        str | None,
        typer.Option(
            help="Origins allowed cross-origin: https://app.example,https://b.example "
            "[COGSERVE_SERVER__CORS_ALLOW_ORIGINS]"
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="postgresql+psycopg://user@host/db [COGSERVE_STORAGE__DATABASE_URL]"),
    ] = None,
    image_store: Annotated[
        str | None, typer.Option(help="s3://bucket/prefix [COGSERVE_STORAGE__IMAGE_STORE]")
    ] = None,
    s3_endpoint_url: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint [COGSERVE_STORAGE__S3_ENDPOINT_URL]")
    ] = None,
    presigned_urls: Annotated[
        bool | None,
        typer.Option(
            "--presigned-urls/--no-presigned-urls",
            help="Link presigned S3 URLs [COGSERVE_STORAGE__PRESIGNED_URLS]",
        ),
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run the ingress and model replicas on Ray Serve (extra: ray)")
    ] = False,
    replicas: Annotated[int, typer.Option(min=1, help="Model replicas (with --ray)")] = 1,
    gpus_per_replica: Annotated[float, typer.Option(min=0, help="GPUs per model replica (with --ray)")] = 0,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (with --ray); default: start a local one")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
) -> None:
    """Serve the images API over HTTP."""
    import uvicorn

    from cogserve.api import create_app
    from cogserve.api.connection import header_deadline_protocol
    from cogserve.engine.loader import preflight
    from cogserve.service.sizes import check_warmup_sizes

    settings = _settings(
        server={
            "host": host,
            "port": port,
            "public_url": public_url,
            "log_format": log_format,
            "cors_allow_origins": cors_allow_origins,
        },
        model={
            "path": model_path,
            "builtin": builtin,
            "allow_download": allow_download,
            "device": device,
            "warmup_sizes": warmup_sizes,
            **_mode_flags(dtype, offload, vae_tiling, text_encoder_quant, compile, step_cache),
        },
        scheduler={
            "max_queue": max_queue,
            "max_batch_size": max_batch_size,
            "max_batch_wait_ms": max_batch_wait_ms,
            "request_timeout_s": request_timeout,
        },
        jobs={"timeout_s": job_timeout, "webhook_allow": webhook_allow},
        auth={"require_auth": require_auth},
        safety={"moderation_policy": moderation_policy, "image_checker": image_checker},
        storage={
            "data_dir": data_dir,
            "database_url": database_url,
            "image_store": image_store,
            "s3_endpoint_url": s3_endpoint_url,
            "presigned_urls": presigned_urls,
        },
    )
    _configure(settings, log_level)
    try:
        preflight(settings.model)
        check_warmup_sizes(settings.model.warmup_sizes)
    except CogserveError as exc:
        _fail(exc.message)
    if ray:
        from cogserve.scaleout.app import run as run_on_ray

        if importlib.util.find_spec("ray") is None:
            _fail("--ray needs Ray Serve: pip install 'cogserve[ray]'")
        run_on_ray(settings, replicas, gpus_per_replica, ray_address)
        return
    fatal: list[str] = []

    def on_fatal(message: str) -> None:
        fatal.append(message)
        server.should_exit = True  # bound below, before the model can fail to load

    try:
        # Builds what start-up can check: moderation policy, label font, server key, database URL.
        asgi_app = create_app(settings, on_fatal=on_fatal)
    except CogserveError as exc:
        _fail(exc.message)
    server = uvicorn.Server(
        uvicorn.Config(
            asgi_app,
            host=settings.server.host,
            port=settings.server.port,
            log_config=None,
            access_log=False,  # cogserve's middleware logs one line per request, with its id
            proxy_headers=False,  # forwarded headers are handled by api.urls, from trusted peers only
            timeout_graceful_shutdown=30,
            http=header_deadline_protocol(settings.server.header_timeout_s),
            timeout_keep_alive=settings.server.keep_alive_s,
        )
    )
    server.run()
    if fatal:
        _fail(fatal[0], code=1)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw")],
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT (seed rules)")] = "1024x1024",
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
        from cogserve.cli_remote import RemoteCancelled, RemoteError, RemoteRequest, generate_remote

        wanted = RemoteRequest(prompt=prompt, model=model, size=size, quality=quality, seed=seed)
        try:
            generate_remote(
                server,
                wanted,
                output=output,
                api_key=api_key or None,
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
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cogserve.api.protocol import ImageGenerationRequest, validation_error
    from cogserve.engine import create_engine, generate_one
    from cogserve.service.images import encode_png
    from cogserve.storage.files import atomic_write

    settings = _settings(
        model={
            "path": model_path,
            "builtin": builtin,
            "allow_download": allow_download,
            "device": device,
            "dtype": dtype,
        },
        storage={"data_dir": data_dir},
    )
    _configure(settings, "warning")
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
        _fail(validation_error(exc).message)
    try:
        params = request.to_job(settings.model, request_id="cli").params
        engine = create_engine(settings)
        engine.load()
        with Progress(
            TextColumn("denoising"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        ) as progress:
            task = progress.add_task("denoising", total=params.steps)
            result = generate_one(
                engine, params, on_progress=lambda done, total: progress.update(task, completed=done)
            )
        target = output or Path(f"cogserve-{params.seed}.png")
        atomic_write(target, encode_png(result.image))
    except CogserveError as exc:
        _fail(exc.message, code=1)
    except OSError as exc:
        _fail(f"could not write the image: {exc}", code=1)
    typer.echo(
        f"wrote {target} ({params.width}x{params.height}, seed {params.seed}, {result.elapsed_s:.2f} s)"
    )


@app.command("verify-watermark")
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

    name = server_name or _settings().safety.server_name
    try:
        with Image.open(image) as opened:
            opened.load()
            typer.echo(describe_watermark(opened, name))
            found = read_watermark(opened) is not None
    except (OSError, UnidentifiedImageError) as exc:
        _fail(f"cannot read {image}: {exc}", code=2)
    if not found:
        raise typer.Exit(1)


@app.command()
def gc(data_dir: DataDir = None) -> None:
    """Delete expired images (files and rows), and files a crash left behind."""
    from cogserve.storage import MetadataStore, create_image_store
    from cogserve.storage.sweep import sweep

    settings = _settings(storage={"data_dir": data_dir})
    _configure(settings, "warning")
    metadata = MetadataStore(settings.database_url)
    started = time.perf_counter()
    try:
        metadata.create_schema()
        report = sweep(create_image_store(settings), metadata)
    except CogserveError as exc:
        _fail(exc.message, code=1)
    finally:
        metadata.close()
    typer.echo(
        f"deleted {report.expired} expired images, {report.orphan_files} orphan files, "
        f"{report.temp_files} temp files in {time.perf_counter() - started:.2f} s"
    )
