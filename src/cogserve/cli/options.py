"""What the commands share: the storage and model options, and Settings built from flags and env.

Each option is defined once here, with its ``COGSERVE_...`` variable in the help text; a flag left
out falls back to that variable, then to the default in ``settings.py``. ``build_settings`` is the
one way a command turns its flags into ``Settings``: a bad value (from a flag or the environment)
ends the command with exit status 2 and one line naming the setting, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from cogserve.errors import CogserveError
from cogserve.logs import configure_logging
from cogserve.settings import Settings

if TYPE_CHECKING:
    from cogserve.storage import MetadataStore

# --help panels: serve has many flags; each command shows its own in these groups.
MODEL_PANEL = "Model"
ENGINE_PANEL = "Engine"
STORAGE_PANEL = "Storage"
AUTH_PANEL = "Auth"
SAFETY_PANEL = "Safety"
CREDENTIALS_PANEL = "Content Credentials"
JOBS_PANEL = "Jobs"
SCALE_OUT_PANEL = "Scale-out"
SERVER_PANEL = "Server"
ENHANCER_PANEL = "Prompt enhancement"
LORA_PANEL = "LoRA"


def default_of(setting: str, unset: str = "unset") -> str:
    """The default of ``area.field`` in settings.py, as --help shows it. Flags themselves default to
    None (left out: the environment variable, then this), so typer cannot show it by itself."""
    area, name = setting.split(".")
    model = Settings.model_fields[area].annotation
    value = model.model_fields[name].get_default(call_default_factory=True)  # type: ignore[union-attr]
    if value is None or value == []:
        return unset
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


#: Exit status for a bad flag or setting, as click uses for usage errors.
EXIT_BAD_CONFIG = 2
#: Exit status for a failure while working (a database, a disk, the model).
EXIT_FAILED = 1

# Storage, as serve takes it. Every command that opens the metadata DB takes --data-dir and
# --database-url; gc, which deletes image bytes, takes --image-store and --s3-endpoint-url too;
# --presigned-urls shapes links, so only serve takes it.
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        rich_help_panel=STORAGE_PANEL,
        show_default=default_of("storage.data_dir"),
        help="Images, the SQLite metadata DB, the server key and the built-in model "
        "[COGSERVE_STORAGE__DATA_DIR]",
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        rich_help_panel=STORAGE_PANEL,
        show_default=default_of("storage.database_url", "the SQLite file"),
        help="Metadata DB as an SQLAlchemy URL, e.g. postgresql+psycopg://host/cogserve; "
        "unset: the SQLite file in --data-dir [COGSERVE_STORAGE__DATABASE_URL]",
    ),
]
ImageStore = Annotated[
    str | None,
    typer.Option(
        "--image-store",
        rich_help_panel=STORAGE_PANEL,
        show_default=default_of("storage.image_store", "files"),
        help="s3://bucket/prefix; unset: files in --data-dir [COGSERVE_STORAGE__IMAGE_STORE]",
    ),
]
S3EndpointUrl = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint-url",
        rich_help_panel=STORAGE_PANEL,
        show_default=default_of("storage.s3_endpoint_url", "AWS"),
        help="S3-compatible endpoint [COGSERVE_STORAGE__S3_ENDPOINT_URL]",
    ),
]
Create = Annotated[
    bool,
    typer.Option(
        "--create",
        rich_help_panel=STORAGE_PANEL,
        help="Make a new SQLite database when none is at the path named (default: refuse, so a wrong "
        "or relative --data-dir does not quietly start an empty one)",
    ),
]
PresignedUrls = Annotated[
    bool | None,
    typer.Option(
        "--presigned-urls",
        rich_help_panel=STORAGE_PANEL,
        show_default=default_of("storage.presigned_urls"),
        help="With an s3:// --image-store, link presigned S3 URLs [COGSERVE_STORAGE__PRESIGNED_URLS]",
    ),
]

# Model: shared by serve and generate.
ModelPath = Annotated[
    str | None,
    typer.Option(
        "--model-path",
        rich_help_panel=MODEL_PANEL,
        show_default=default_of("model.path", "the built-in model"),
        help="CogView4 diffusers folder or cached repo id [COGSERVE_MODEL__PATH]",
    ),
]
Builtin = Annotated[
    str | None,
    typer.Option(
        "--builtin",
        rich_help_panel=MODEL_PANEL,
        show_default=default_of("model.builtin"),
        help="Built-in model when no --model-path: shapes (trained; draws flat shapes) | tiny-random "
        "(noise; for tests) [COGSERVE_MODEL__BUILTIN]",
    ),
]
AllowDownload = Annotated[
    bool | None,
    typer.Option(
        "--allow-download",
        rich_help_panel=MODEL_PANEL,
        show_default=default_of("model.allow_download"),
        help="Let a repo id be downloaded [COGSERVE_MODEL__ALLOW_DOWNLOAD]",
    ),
]
Device = Annotated[
    str | None,
    typer.Option(
        "--device",
        rich_help_panel=MODEL_PANEL,
        show_default=default_of("model.device"),
        help="auto | cpu | cuda | cuda:N [COGSERVE_MODEL__DEVICE]",
    ),
]
DType = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        rich_help_panel=MODEL_PANEL,
        show_default=default_of("model.dtype"),
        help="auto | bf16 | fp32 [COGSERVE_MODEL__DTYPE]",
    ),
]

# LoRA adapters: serve and `loras list`.
LoraDir = Annotated[
    Path | None,
    typer.Option(
        "--lora-dir",
        rich_help_panel=LORA_PANEL,
        show_default=default_of("lora.dir", "only the shapes model's own"),
        help="Folder of LoRA adapters (PEFT/CogKit or diffusers), one per sub-folder or .safetensors file, "
        "named by it; rescanned live; served beside the shapes model's own (extra: lora) "
        "[COGSERVE_LORA__DIR]",
    ),
]
MaxLoadedLoras = Annotated[
    int | None,
    typer.Option(
        "--max-loaded-loras",
        rich_help_panel=LORA_PANEL,
        show_default=default_of("lora.max_loaded"),
        help="Adapters kept loaded; the least recently used goes beyond it [COGSERVE_LORA__MAX_LOADED]",
    ),
]
MaxLoraRank = Annotated[
    int | None,
    typer.Option(
        "--max-lora-rank",
        rich_help_panel=LORA_PANEL,
        show_default=default_of("lora.max_rank"),
        help="Adapters of a higher rank are refused [COGSERVE_LORA__MAX_RANK]",
    ),
]

# Prompt enhancement: shared by serve and enhance. The key comes from COGSERVE_ENHANCER__API_KEY only,
# so it never shows in a process list or shell history.
EnhancerUrl = Annotated[
    str | None,
    typer.Option(
        "--enhancer-url",
        rich_help_panel=ENHANCER_PANEL,
        show_default=default_of("enhancer.url", "off"),
        help="OpenAI-compatible API base that rewrites prompts, e.g. https://open.bigmodel.cn/api/paas/v4 "
        "(key: COGSERVE_ENHANCER__API_KEY); unset: no enhancement [COGSERVE_ENHANCER__URL]",
    ),
]
EnhancerModel = Annotated[
    str | None,
    typer.Option(
        "--enhancer-model",
        rich_help_panel=ENHANCER_PANEL,
        show_default=default_of("enhancer.model"),
        help="Chat model [COGSERVE_ENHANCER__MODEL]",
    ),
]
EnhancerTimeout = Annotated[
    float | None,
    typer.Option(
        "--enhancer-timeout",
        rich_help_panel=ENHANCER_PANEL,
        show_default=default_of("enhancer.timeout_s"),
        help="Seconds, retries included [COGSERVE_ENHANCER__TIMEOUT_S]",
    ),
]
EnhancerRetries = Annotated[
    int | None,
    typer.Option(
        "--enhancer-retries",
        rich_help_panel=ENHANCER_PANEL,
        show_default=default_of("enhancer.retries"),
        help="Retries after a failure [COGSERVE_ENHANCER__RETRIES]",
    ),
]
EnhancerMode = Annotated[
    str | None,
    typer.Option(
        "--enhancer-mode",
        rich_help_panel=ENHANCER_PANEL,
        show_default=default_of("enhancer.mode"),
        help="Default when a request does not send enhance_prompt: auto (short prompts) | always | never "
        "[COGSERVE_ENHANCER__MODE]",
    ),
]
EnhancerPromptFile = Annotated[
    Path | None,
    typer.Option(
        "--enhancer-prompt-file",
        rich_help_panel=ENHANCER_PANEL,
        show_default=default_of("enhancer.prompt_file", "the shipped one"),
        help="TOML system prompt and few-shot examples [COGSERVE_ENHANCER__PROMPT_FILE]",
    ),
]


def enhancer_flags(
    url: str | None,
    model: str | None,
    timeout: float | None,
    retries: int | None,
    prompt_file: Path | None,
    mode: str | None = None,
) -> dict[str, Any]:
    """The ``enhancer`` area for ``build_settings`` from the enhancer options."""
    return {
        "url": url,
        "model": model,
        "timeout_s": timeout,
        "retries": retries,
        "prompt_file": prompt_file,
        "mode": mode,
    }


def storage_flags(
    data_dir: Path | None,
    database_url: str | None,
    image_store: str | None = None,
    s3_endpoint_url: str | None = None,
    presigned_urls: bool | None = None,
) -> dict[str, Any]:
    """The ``storage`` area for ``build_settings`` from the storage options."""
    return {
        "data_dir": data_dir,
        "database_url": database_url,
        "image_store": image_store,
        "s3_endpoint_url": s3_endpoint_url,
        "presigned_urls": presigned_urls,
    }


def fail(message: str, code: int = EXIT_BAD_CONFIG) -> NoReturn:
    """Print ``error: <message>`` in red on stderr and end the command with ``code``."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def build_settings(**areas: dict[str, Any]) -> Settings:
    """Settings from env and defaults, with the flags that were given (not None) laid on top.

    ``areas`` maps a settings area (``storage``, ``model``, ...) to its flags' values. Invalid
    settings end the command: ``error: invalid setting <area>.<field>: <why>``, exit status 2.
    """
    overrides: dict[str, Any] = {
        area: {key: value for key, value in values.items() if value is not None}
        for area, values in areas.items()
    }
    try:
        return Settings(**{area: values for area, values in overrides.items() if values})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        fail(f"invalid setting {where}: {str(first['msg']).removeprefix('Value error, ')}")
    except SettingsError as exc:  # an environment variable that is not valid JSON for its area
        fail(f"invalid setting: {exc}")


def configure_process(settings: Settings, log_level: str) -> None:
    """Logging as the settings ask, and no model downloads unless they are allowed."""
    configure_logging(log_level, settings.server.log_format)
    # The server never reaches the hub at run time unless told to.
    if not settings.model.allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"


def explained(exc: CogserveError) -> str:
    """The error, with the driver's first line of why (an operator at a terminal needs it)."""
    cause = getattr(exc.__cause__, "orig", None) or exc.__cause__
    reason = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    return f"{exc.message}: {reason}" if reason and reason not in exc.message else exc.message


def missing_database(settings: Settings) -> Path | None:
    """The SQLite file ``settings`` name when it does not exist yet; None when it does, or when the
    database is a server's (PostgreSQL: the operator made it; opening it creates nothing)."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database)
    return None if path.exists() else path


@contextmanager
def open_database(settings: Settings, *, create: bool) -> Iterator[MetadataStore]:
    """``open_metadata``, saying on stderr which database it opened; refuses (exit 2) to make a new
    SQLite file unless ``create``: run from the wrong folder, a relative data dir would otherwise
    start an empty database there, and its keys would never reach the server."""
    missing = missing_database(settings)
    if missing is not None and not create:
        fail(
            f"no database at {missing}: name the server's with --data-dir or --database-url "
            "(cogserve serve makes one on its first start), or pass --create to make a new one there"
        )
    with open_metadata(settings) as store:
        shown = store.engine.url.render_as_string(hide_password=True)
        typer.echo(f"database: {shown}{' (new)' if missing is not None else ''}", err=True)
        yield store


@contextmanager
def open_metadata(settings: Settings) -> Iterator[MetadataStore]:
    """The metadata DB that ``settings`` names, closed on the way out.

    A ``CogserveError`` while opening it or inside the ``with`` block ends the command with
    ``error: <message>: <driver's reason>`` and exit status 1. The schema is left as it is.
    """
    from cogserve.storage import MetadataStore

    try:
        store = MetadataStore(settings.database_url)
    except CogserveError as exc:
        fail(explained(exc), code=EXIT_FAILED)
    try:
        yield store
    except CogserveError as exc:
        fail(explained(exc), code=EXIT_FAILED)
    finally:
        store.close()
