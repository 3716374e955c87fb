"""``cogserve serve``: the images API over HTTP (uvicorn), or on Ray Serve with ``--ray``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from cogserve.cli.options import (
    AUTH_PANEL,
    CREDENTIALS_PANEL,
    ENGINE_PANEL,
    EXIT_FAILED,
    JOBS_PANEL,
    MODEL_PANEL,
    SAFETY_PANEL,
    SCALE_OUT_PANEL,
    SERVER_PANEL,
    AllowDownload,
    Builtin,
    DatabaseUrl,
    DataDir,
    Device,
    DType,
    EnhancerMode,
    EnhancerModel,
    EnhancerPromptFile,
    EnhancerRetries,
    EnhancerTimeout,
    EnhancerUrl,
    ImageStore,
    LoraDir,
    MaxLoadedLoras,
    MaxLoraRank,
    ModelPath,
    PresignedUrls,
    S3EndpointUrl,
    build_settings,
    configure_process,
    default_of,
    enhancer_flags,
    fail,
    storage_flags,
)
from cogserve.errors import CogserveError

Offload = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=ENGINE_PANEL,
        show_default=default_of("model.offload"),
        help="none | model | sequential: CPU offload, CUDA only [COGSERVE_MODEL__OFFLOAD]",
    ),
]
VaeTiling = Annotated[
    bool | None,
    typer.Option(
        "--vae-tiling",
        rich_help_panel=ENGINE_PANEL,
        show_default=default_of("model.vae_tiling"),
        help="Tiled VAE decode [COGSERVE_MODEL__VAE_TILING]",
    ),
]
TextEncoderQuant = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=ENGINE_PANEL,
        show_default=default_of("model.text_encoder_quant"),
        help="none | int8 (torchao) | nf4 (CUDA) [COGSERVE_MODEL__TEXT_ENCODER_QUANT]",
    ),
]
Compile = Annotated[
    bool | None,
    typer.Option(
        "--compile",
        rich_help_panel=ENGINE_PANEL,
        show_default=default_of("model.compile"),
        help="torch.compile the transformer [COGSERVE_MODEL__COMPILE]",
    ),
]
StepCache = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=ENGINE_PANEL,
        show_default=default_of("model.step_cache"),
        help="none | fbc:<threshold> First Block Cache [COGSERVE_MODEL__STEP_CACHE]",
    ),
]


def serve(
    host: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=SERVER_PANEL,
            show_default=default_of("server.host"),
            help="Address to bind [COGSERVE_SERVER__HOST]",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=SERVER_PANEL,
            show_default=default_of("server.port"),
            help="Port to bind [COGSERVE_SERVER__PORT]",
        ),
    ] = None,
    data_dir: DataDir = None,
    model_path: ModelPath = None,
    builtin: Builtin = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=SERVER_PANEL,
            show_default=default_of("server.public_url", "the request's own"),
            help="Base URL of image links [COGSERVE_SERVER__PUBLIC_URL]",
        ),
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
        typer.Option(
            rich_help_panel=MODEL_PANEL,
            show_default=default_of("model.warmup_sizes"),
            help="Warm before ready: 1024x1024:20,512x512 [COGSERVE_MODEL__WARMUP_SIZES]",
        ),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=ENGINE_PANEL,
            show_default=default_of("scheduler.max_queue"),
            help="Waiting requests before 429 [COGSERVE_SCHEDULER__MAX_QUEUE]",
        ),
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=ENGINE_PANEL,
            show_default=default_of("scheduler.max_batch_size", "by device"),
            help="Images per pipeline call [COGSERVE_SCHEDULER__MAX_BATCH_SIZE]",
        ),
    ] = None,
    max_batch_wait_ms: Annotated[
        float | None,
        typer.Option(
            rich_help_panel=ENGINE_PANEL,
            show_default=default_of("scheduler.max_batch_wait_ms"),
            help="Longest wait for batch company [COGSERVE_SCHEDULER__MAX_BATCH_WAIT_MS]",
        ),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            rich_help_panel=ENGINE_PANEL,
            show_default=default_of("scheduler.request_timeout_s"),
            help="Seconds before a request times out [COGSERVE_SCHEDULER__REQUEST_TIMEOUT_S]",
        ),
    ] = None,
    require_auth: Annotated[
        bool | None,
        typer.Option(
            "--require-auth",
            rich_help_panel=AUTH_PANEL,
            show_default=default_of("auth.require_auth", "on once a key exists"),
            help="Refuse keyless requests even before a key exists (the first key turns auth on "
            "anyway) [COGSERVE_AUTH__REQUIRE_AUTH]",
        ),
    ] = None,
    moderation_policy: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel=SAFETY_PANEL,
            show_default=default_of("safety.moderation_policy", "the built-in policy"),
            help="Moderation policy TOML [COGSERVE_SAFETY__MODERATION_POLICY]",
        ),
    ] = None,
    image_checker: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=SAFETY_PANEL,
            show_default=default_of("safety.image_checker"),
            help="none | nudenet [COGSERVE_SAFETY__IMAGE_CHECKER]",
        ),
    ] = None,
    no_c2pa: Annotated[
        bool,
        typer.Option(
            "--no-c2pa",
            rich_help_panel=CREDENTIALS_PANEL,
            help="Sign no C2PA manifest (Content Credentials) into images; the variable: false "
            "[COGSERVE_CREDENTIALS__ENABLED]",
        ),
    ] = False,
    c2pa_cert_chain: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel=CREDENTIALS_PANEL,
            show_default=default_of("credentials.cert_chain", "a dev chain in --data-dir"),
            help="PEM chain, signing certificate first [COGSERVE_CREDENTIALS__CERT_CHAIN]",
        ),
    ] = None,
    c2pa_private_key: Annotated[
        Path | None,
        typer.Option(
            "--c2pa-key",
            rich_help_panel=CREDENTIALS_PANEL,
            show_default=default_of("credentials.private_key"),
            help="PEM key of the signing certificate [COGSERVE_CREDENTIALS__PRIVATE_KEY]",
        ),
    ] = None,
    c2pa_timestamp_url: Annotated[
        str | None,
        typer.Option(
            "--c2pa-tsa-url",
            rich_help_panel=CREDENTIALS_PANEL,
            show_default=default_of("credentials.timestamp_url", "no timestamp"),
            help="RFC 3161 timestamp authority [COGSERVE_CREDENTIALS__TIMESTAMP_URL]",
        ),
    ] = None,
    c2pa_include_prompt: Annotated[
        bool | None,
        typer.Option(
            "--c2pa-prompt",
            rich_help_panel=CREDENTIALS_PANEL,
            show_default=default_of("credentials.include_prompt"),
            help="Put the prompt in the manifest [COGSERVE_CREDENTIALS__INCLUDE_PROMPT]",
        ),
    ] = None,
    c2pa_include_user_id: Annotated[
        bool | None,
        typer.Option(
            "--c2pa-user-id",
            rich_help_panel=CREDENTIALS_PANEL,
            show_default=default_of("credentials.include_user_id"),
            help="Put the user_id in the manifest [COGSERVE_CREDENTIALS__INCLUDE_USER_ID]",
        ),
    ] = None,
    job_timeout: Annotated[
        float | None,
        typer.Option(
            rich_help_panel=JOBS_PANEL,
            show_default=default_of("jobs.timeout_s"),
            help="Seconds an async job may take [COGSERVE_JOBS__TIMEOUT_S]",
        ),
    ] = None,
    webhook_allow: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=JOBS_PANEL,
            show_default=default_of("jobs.webhook_allow", "none"),
            help="Hosts webhooks may go to: a.example,b.example:8443 [COGSERVE_JOBS__WEBHOOK_ALLOW]",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=SERVER_PANEL,
            show_default=default_of("server.log_format"),
            help="text | json (one object per line) [COGSERVE_SERVER__LOG_FORMAT]",
        ),
    ] = None,
    cors_allow_origins: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=SERVER_PANEL,
            show_default=default_of("server.cors_allow_origins", "none"),
            help="Origins allowed cross-origin: https://app.example,https://b.example "
            "[COGSERVE_SERVER__CORS_ALLOW_ORIGINS]",
        ),
    ] = None,
    lora_dir: LoraDir = None,
    max_loaded_loras: MaxLoadedLoras = None,
    max_lora_rank: MaxLoraRank = None,
    enhancer_url: EnhancerUrl = None,
    enhancer_model: EnhancerModel = None,
    enhancer_timeout: EnhancerTimeout = None,
    enhancer_retries: EnhancerRetries = None,
    enhancer_mode: EnhancerMode = None,
    enhancer_prompt_file: EnhancerPromptFile = None,
    database_url: DatabaseUrl = None,
    image_store: ImageStore = None,
    s3_endpoint_url: S3EndpointUrl = None,
    presigned_urls: PresignedUrls = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            rich_help_panel=SCALE_OUT_PANEL,
            help="Run the ingress and model replicas on Ray Serve (extra: ray)",
        ),
    ] = False,
    replicas: Annotated[
        int, typer.Option(rich_help_panel=SCALE_OUT_PANEL, min=1, help="Model replicas (with --ray)")
    ] = 1,
    gpus_per_replica: Annotated[
        float,
        typer.Option(rich_help_panel=SCALE_OUT_PANEL, min=0, help="GPUs per model replica (with --ray)"),
    ] = 0,
    ray_address: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=SCALE_OUT_PANEL,
            help="Join this Ray cluster (with --ray); default: start a local one",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option(rich_help_panel=SERVER_PANEL, help="debug | info | warning")
    ] = "info",
) -> None:
    """Serve the images API over HTTP."""
    import uvicorn

    from cogserve.api import create_app
    from cogserve.api.connection import header_deadline_protocol
    from cogserve.engine.loader import preflight
    from cogserve.engine.lora import LoraRegistry
    from cogserve.service.sizes import check_warmup_sizes

    settings = build_settings(
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
            "dtype": dtype,
            "offload": offload,
            "vae_tiling": vae_tiling,
            "text_encoder_quant": text_encoder_quant,
            "compile": compile,
            "step_cache": step_cache,
        },
        scheduler={
            "max_queue": max_queue,
            "max_batch_size": max_batch_size,
            "max_batch_wait_ms": max_batch_wait_ms,
            "request_timeout_s": request_timeout,
        },
        lora={"dir": lora_dir, "max_loaded": max_loaded_loras, "max_rank": max_lora_rank},
        jobs={"timeout_s": job_timeout, "webhook_allow": webhook_allow},
        auth={"require_auth": require_auth},
        safety={"moderation_policy": moderation_policy, "image_checker": image_checker},
        credentials={
            "enabled": False if no_c2pa else None,
            "cert_chain": c2pa_cert_chain,
            "private_key": c2pa_private_key,
            "timestamp_url": c2pa_timestamp_url,
            "include_prompt": c2pa_include_prompt,
            "include_user_id": c2pa_include_user_id,
        },
        storage=storage_flags(data_dir, database_url, image_store, s3_endpoint_url, presigned_urls),
        enhancer=enhancer_flags(
            enhancer_url,
            enhancer_model,
            enhancer_timeout,
            enhancer_retries,
            enhancer_prompt_file,
            enhancer_mode,
        ),
    )
    configure_process(settings, log_level)
    try:
        preflight(settings.model)
        check_warmup_sizes(settings.model.warmup_sizes)
        LoraRegistry.from_settings(settings)  # peft installed, the folder there
    except CogserveError as exc:
        fail(exc.message)
    if ray:
        from cogserve.scaleout.app import run as run_on_ray

        if importlib.util.find_spec("ray") is None:
            fail("--ray needs Ray Serve: pip install 'cogserve[ray]'")
        run_on_ray(settings, replicas, gpus_per_replica, ray_address)
        return
    fatal: list[str] = []

    def on_fatal(message: str) -> None:
        fatal.append(message)
        server.should_exit = True  # bound below, before the model can fail to load

    try:
        # Builds what start-up can check: moderation policy, label font, signing certificate, server key,
        # database URL.
        asgi_app = create_app(settings, on_fatal=on_fatal)
    except CogserveError as exc:
        fail(exc.message)
    server = uvicorn.Server(
        uvicorn.Config(
            asgi_app,
            host=settings.server.host,
            port=settings.server.port,
            log_config=None,
            access_log=False,  # cogserve's middleware logs one line per request, with its id
            proxy_headers=False,  # forwarded headers are handled by api.dependencies, from trusted peers only
            timeout_graceful_shutdown=30,
            http=header_deadline_protocol(settings.server.header_timeout_s),
            timeout_keep_alive=settings.server.keep_alive_s,
        )
    )
    server.run()
    if fatal:
        fail(fatal[0], code=EXIT_FAILED)
