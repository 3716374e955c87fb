"""The one typed Settings object.

Values come from, in order of precedence: explicit overrides (the CLI's flags), environment
variables (prefix ``COGSERVE_``, nested areas joined by ``__``, e.g. ``COGSERVE_MODEL__PATH``), then
the defaults below. Only ``cli`` and ``api.app`` build it; everything else receives it explicitly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DType = Literal["auto", "bf16", "fp32"]
Offload = Literal["none", "model", "sequential"]
TextEncoderQuant = Literal["none", "int8", "nf4"]
Builtin = Literal["shapes", "tiny-random"]

#: (standard steps, hd steps, guidance scale) when the settings leave them unset. CogView4-6B: the
#: cloud API's quality levels; the built-in shapes model: what its evaluation measured as enough.
SAMPLING_DEFAULTS: dict[str, tuple[int, int, float]] = {
    "cogview4": (20, 50, 3.5),
    "shapes": (10, 24, 2.0),
    "tiny-random": (20, 50, 3.5),
}


def comma_list(value: Any) -> Any:
    """List settings from env vars and flags: "a,b" (or a JSON list); a list is kept as is."""
    if isinstance(value, str):
        if value.strip().startswith("["):
            return json.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, description="Port to bind.")
    public_url: str | None = Field(
        None,
        description="Base URL that image links start with, e.g. https://img.example.com. "
        "Unset: the address the request reached, honouring X-Forwarded-* from trusted proxies.",
    )
    # NoDecode (here and on the other list fields): "a,b" from the environment is split by a
    # validator instead of being rejected as invalid JSON.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Peers whose X-Forwarded-Proto/Host/Prefix headers are trusted ('*' for any).",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted.")
    keep_alive_s: int = Field(
        75,
        ge=1,
        description="How long an idle kept-alive connection stays open. Longer than clients' own idle "
        "expiry (httpx, so the zhipuai and openai SDKs: 5 s), so the client closes first: a server "
        "closing at the same moment races a POST the client is sending, which fails unretried.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a client may take to send a request's line and headers (from the "
        "connection's start or the request's first byte); slower ones get 408 and are closed.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest a request may take to deliver its body, counted from its headers; a client "
        "that stalls mid-body (or sends less than its Content-Length) gets 408 and the connection closes.",
    )
    max_header_bytes: int = Field(
        16 << 10,
        ge=1024,
        description="Largest total of request header names and values (431 beyond it). The HTTP parser "
        "itself sets no limit, so this is the one that applies.",
    )
    max_url_bytes: int = Field(
        8 << 10,
        ge=256,
        description="Longest request target, path plus query string (414 beyond it). The HTTP parser "
        "refuses targets of 64 KiB and more with a bare 400 before cogserve sees them.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: human-readable lines; json: one JSON object per line (log collectors)."
    )
    # NoDecode: the env source would otherwise demand JSON; "a,b" is split by the validator below.
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port], or '*') allowed to call the API cross-origin. "
        "Empty: no CORS headers, so only same-origin pages (the playground) can read responses.",
    )

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _split_ips(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("cors_allow_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        origins = []
        for origin in value:
            # Browsers send the origin without a path or trailing slash; matching is exact.
            origin = origin.strip().rstrip("/")
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"CORS origin '{origin}' is not '*' or scheme://host[:port]")
            origins.append(origin)
        return origins

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value.rstrip("/")


class ModelSettings(BaseModel):
    path: str | None = Field(
        None,
        description="Diffusers-layout folder (e.g. CogView4-6B) or a repo id already in the local HF "
        "cache. Unset: a built-in model (see builtin).",
    )
    builtin: Builtin = Field(
        "tiny-random",
        description="The built-in model served when path is unset: tiny-random (random weights, noise "
        "images; the test suite's fast fixture) or shapes (shipped in the package, being trained to draw "
        "flat shapes from English or Chinese prompts; not yet good enough to be the default).",
    )
    allow_download: bool = Field(False, description="Let a repo id be downloaded from the hub.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: DType = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32")
    codes: list[str] = Field(
        default_factory=lambda: ["cogview-4", "cogview-4-250304"],
        description="Model codes a request may name; all map to the loaded pipeline.",
    )
    standard_steps: int = Field(
        None,  # type: ignore[assignment]  # filled with the model's default after validation
        ge=1,
        le=200,
        description="Denoising steps for quality=standard. Unset: the model's default (20 for "
        "CogView4-6B, 10 for the built-in shapes model).",
    )
    hd_steps: int = Field(
        None,  # type: ignore[assignment]
        ge=1,
        le=200,
        description="Denoising steps for quality=hd. Unset: the model's default (50; 24 for shapes).",
    )
    guidance_scale: float = Field(
        None,  # type: ignore[assignment]
        ge=0.0,
        le=30.0,
        description="Classifier-free guidance scale. Unset: the model's default (3.5; 2.0 for shapes).",
    )
    max_prompt_chars: int = Field(4000, ge=1, description="Longest prompt accepted, in characters.")
    warmup: bool = Field(True, description="Run the warm-up generations before reporting ready.")
    warmup_sizes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["512x512:2"],
        description="(size, steps) buckets generated once before /readyz turns 200, as WIDTHxHEIGHT[:STEPS] "
        "(steps default to standard_steps). Warm the sizes you serve, above all with compile on.",
    )
    offload: Offload = Field(
        "none",
        description="none | model (whole models move to the GPU in turn; ~40 % less memory, slower) | "
        "sequential (layer by layer; least memory, much slower). Needs CUDA.",
    )
    vae_tiling: bool = Field(False, description="Decode latents in tiles: less peak memory at large sizes.")
    text_encoder_quant: TextEncoderQuant = Field(
        "none",
        description="Quantise the GLM text encoder: int8 (torchao weight-only; CPU or CUDA) or nf4 "
        "(bitsandbytes 4-bit; CUDA only).",
    )
    compile: bool = Field(
        False, description="torch.compile the transformer; the warm-up pays the compile before ready."
    )
    step_cache: str = Field(
        "none",
        description="none | fbc:<threshold>: diffusers First Block Cache, skipping most of the transformer "
        "on steps whose first block barely changes (e.g. fbc:0.1; higher is faster and less exact).",
    )
    builtin_dir: Path | None = Field(
        None,
        description="Where the tiny-random built-in model is built and saved. Unset: <data_dir>/models.",
    )

    @model_validator(mode="after")
    def _sampling_defaults(self) -> ModelSettings:
        standard, hd, guidance = SAMPLING_DEFAULTS[self.model_family]
        if self.standard_steps is None:
            self.standard_steps = standard
        if self.hd_steps is None:
            self.hd_steps = hd
        if self.guidance_scale is None:
            self.guidance_scale = guidance
        return self

    @property
    def model_family(self) -> str:
        """Which defaults apply: the built-in model's, or a CogView4 checkpoint's."""
        return "cogview4" if self.path is not None else self.builtin

    @field_validator("dtype", mode="before")
    @classmethod
    def _refuse_fp16(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in {"fp16", "float16", "half"}:
            raise ValueError(
                "fp16 is not supported: CogView4 overflows in float16 (black or NaN images); "
                "use bf16 (CUDA) or fp32"
            )
        return value

    @field_validator("warmup_sizes", mode="before")
    @classmethod
    def _split_warmup_sizes(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("warmup_sizes")
    @classmethod
    def _check_warmup_sizes(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not re.fullmatch(r"[0-9]+x[0-9]+(:[0-9]+)?", entry):
                raise ValueError(f"warm-up bucket '{entry}' is not WIDTHxHEIGHT or WIDTHxHEIGHT:STEPS")
        return value

    @field_validator("step_cache")
    @classmethod
    def _check_step_cache(cls, value: str) -> str:
        if value == "none":
            return value
        match = re.fullmatch(r"fbc:([0-9]*\.?[0-9]+)", value)
        if match is None or not 0 < float(match.group(1)) < 1:
            raise ValueError("step_cache must be 'none' or 'fbc:<threshold>' with 0 < threshold < 1")
        return value

    @property
    def fbc_threshold(self) -> float | None:
        return None if self.step_cache == "none" else float(self.step_cache.removeprefix("fbc:"))


class LoraSettings(BaseModel):
    """Per-request LoRA adapters (docs/lora.md). Off until dir is set."""

    dir: Path | None = Field(
        None,
        description="Folder of LoRA adapters, one per sub-folder (PEFT/CogKit: adapter_model.safetensors + "
        "adapter_config.json; or diffusers' pytorch_lora_weights.safetensors) or <name>.safetensors file, "
        "named by it. Rescanned when listed or named, so new adapters need no restart. Served beside the "
        "adapters a built-in model ships (the shapes model's night); a name here wins. Unset: only those.",
    )
    max_loaded: int = Field(
        8,
        ge=1,
        le=256,
        description="Adapters kept loaded in the model; the least recently used is unloaded beyond this "
        "(a call needing more than this many at once still gets them).",
    )
    max_rank: int = Field(
        256, ge=1, description="Adapters of a higher rank are refused when found (CogKit trains rank 128)."
    )


class SchedulerSettings(BaseModel):
    max_queue: int = Field(
        64, ge=1, description="Requests allowed to wait; one more is refused at once with 429/1305."
    )
    max_batch_size: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Most images merged into one pipeline call (1 turns batching off). Unset: 4 on CUDA, "
        "1 on CPU, where a batch was measured slower than the same images one by one.",
    )
    max_batch_wait_ms: float = Field(
        20.0,
        ge=0,
        description="Longest a request waits for company of the same size and steps. Only waits when "
        "other requests are in flight: a lone client never waits.",
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="A request not done by then is dropped (queued) or interrupted (running)."
    )


class JobSettings(BaseModel):
    timeout_s: float = Field(
        3600.0, gt=0, description="An async job not done this long after it was queued fails with 504/1230."
    )
    lease_s: float = Field(
        15.0,
        gt=0,
        description="How long a job stays with the process working on it without a renewal. A process "
        "that dies stops renewing; after this long another (or the restarted one) runs the job again.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Runs a job gets across server crashes before it is failed for good."
    )
    webhook_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts (host or host:port) that webhook_url may point at. Empty: webhooks are refused, "
        "so a client cannot make the server send requests into its network.",
    )
    webhook_attempts: int = Field(
        5, ge=1, le=20, description="Deliveries tried before a webhook is given up."
    )
    webhook_backoff_s: float = Field(
        1.0, gt=0, description="Wait before the first retry; doubles after each failed delivery."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Per-delivery timeout.")

    @field_validator("webhook_allow", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        hosts = comma_list(value)
        if isinstance(hosts, list):
            return [host.lower() if isinstance(host, str) else host for host in hosts]
        return hosts


class AuthSettings(BaseModel):
    require_auth: bool = Field(
        False,
        description="Refuse requests without a key even before any key exists. Without it, a server "
        "with no keys runs open (local use) and says so loudly at start.",
    )
    server_key: SecretStr | None = Field(
        None,
        description="32-byte key (64 hex digits or base64) that encrypts API-key secrets in the DB. "
        "Unset: read from server_key_file, created there on first start.",
    )
    server_key_file: Path | None = Field(
        None, description="Where the server key is kept (mode 0600). Unset: <data_dir>/server.key."
    )
    key_rpm: int = Field(120, ge=0, description="Default requests per minute per API key (0: no limit).")
    key_concurrency: int = Field(8, ge=0, description="Default requests in flight per API key (0: no limit).")
    user_rpm: int = Field(30, ge=0, description="Requests per minute per user_id (0: no limit).")
    user_concurrency: int = Field(2, ge=0, description="Requests in flight per user_id (0: no limit).")


class SafetySettings(BaseModel):
    moderation_policy: Path | None = Field(
        None, description="TOML policy of categories, levels and terms. Unset: the shipped policy."
    )
    block_level: int = Field(
        1,
        ge=-1,
        le=3,
        description="Prompts or images at this content_filter level or more severe (0 is most severe) "
        "are refused with 400/1301; -1 turns blocking off (levels are still reported).",
    )
    image_checker: Literal["none", "nudenet"] = Field(
        "none", description="Check generated images: none | nudenet (optional extra, AGPL-3.0)."
    )
    watermark_text: str = Field("AI生成", min_length=1, max_length=32, description="Visible corner label.")
    watermark_font: Path | None = Field(
        None, description="TTF/OTF font for the label. Unset: the shipped font (covers the default text)."
    )
    server_name: str = Field(
        "cogserve", min_length=1, max_length=64, description="Named in each image's invisible watermark."
    )


class CredentialsSettings(BaseModel):
    """Content Credentials: a C2PA manifest, signed with the operator's certificate, in every image."""

    enabled: bool = Field(
        True,
        description="Sign a C2PA manifest into every generated PNG (a request with "
        "watermark_enabled=false gets none).",
    )
    cert_chain: Path | None = Field(
        None,
        description="PEM certificate chain: the signing (end-entity) certificate first, then its "
        "issuers. Unset (with private_key unset too): a self-signed development chain, made in "
        "<data_dir>/credentials on first start.",
    )
    private_key: Path | None = Field(
        None,
        description="Unencrypted PEM private key of the chain's first certificate (EC P-256/384/521, "
        "Ed25519, or RSA for PS256).",
    )
    timestamp_url: str | None = Field(
        None,
        description="RFC 3161 timestamp authority that countersigns each manifest, e.g. "
        "http://timestamp.digicert.com (each image then waits for it). Unset: no timestamp.",
    )
    include_prompt: bool = Field(False, description="Put the prompt in the manifest (off: privacy).")
    include_user_id: bool = Field(False, description="Put the request's user_id in the manifest.")

    @field_validator("cert_chain", "private_key", "timestamp_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("timestamp_url")
    @classmethod
    def _check_timestamp_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("timestamp_url must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _check_pair(self) -> CredentialsSettings:
        if (self.cert_chain is None) != (self.private_key is None):
            raise ValueError(
                "set both cert_chain and private_key, or neither (a self-signed development chain)"
            )
        return self


EnhanceMode = Literal["auto", "always", "never"]


class EnhancerSettings(BaseModel):
    """Prompt enhancement: an OpenAI-compatible chat model rewrites short prompts into the long,
    detailed captions CogView4 was trained on (its authors' recommendation). Off until url is set."""

    url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible API; cogserve POSTs to <url>/chat/completions "
        "(e.g. https://open.bigmodel.cn/api/paas/v4, http://127.0.0.1:11434/v1). Unset: no enhancement.",
    )
    model: str = Field("glm-4-flash", min_length=1, description="Chat model that rewrites prompts.")
    api_key: SecretStr | None = Field(
        None, description="Bearer key for the enhancer (from the environment only; never logged)."
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest an enhancement may take, retries included; then the prompt is used as sent.",
    )
    retries: int = Field(
        2, ge=0, le=10, description="Retries after a failed call (connection error, 429, 5xx)."
    )
    mode: EnhanceMode = Field(
        "auto",
        description="For requests that do not send enhance_prompt: auto (prompts shorter than "
        "auto_max_chars) | always | never. A request's enhance_prompt wins.",
    )
    auto_max_chars: int = Field(
        120, ge=1, description="In auto mode, prompts shorter than this are enhanced; longer ones are kept."
    )
    max_chars: int = Field(
        1500,
        ge=1,
        description="Longest rewrite accepted (and never more than model.max_prompt_chars); a longer one "
        "is discarded and the prompt used as sent.",
    )
    prompt_file: Path | None = Field(
        None, description="TOML with the system prompt and few-shot examples. Unset: the shipped one."
    )
    cache_size: int = Field(1024, ge=0, description="Rewrites kept for identical prompts (0: no cache).")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("enhancer url must start with http:// or https://")
        return value.rstrip("/").removesuffix("/chat/completions")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value


class StorageSettings(BaseModel):
    data_dir: Path = Field(Path("cogserve-data"), description="Images, metadata DB and built-in model.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the metadata DB. Unset: SQLite file in the data dir."
    )
    image_ttl_days: float = Field(30.0, gt=0, description="How long an image URL stays valid.")
    sweep_interval_s: float = Field(600.0, gt=0, description="How often the server deletes expired images.")
    image_store: str | None = Field(
        None,
        description="Where image bytes go: s3://BUCKET or s3://BUCKET/PREFIX in any S3-compatible store "
        "(AWS S3, SeaweedFS, MinIO, ...; needs the 's3' extra). The bucket must exist. Unset: files in "
        "<data_dir>/images.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="The S3 API's base URL, e.g. http://127.0.0.1:8333 (path-style addressing is used). "
        "Unset: AWS S3 in s3_region.",
    )
    s3_region: str = Field("us-east-1", min_length=1, description="Region that requests are signed for.")
    s3_access_key_id: str | None = Field(
        None,
        description="Access key for the image store. Unset (with s3_secret_access_key unset too): the "
        "standard AWS chain (AWS_* variables, ~/.aws, instance or container roles).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, description="Secret key paired with s3_access_key_id."
    )
    presigned_urls: bool = Field(
        False,
        description="With an S3 image_store, image links are presigned S3 GET URLs, so clients fetch the "
        "bytes from the store directly. A link lives as long as the image, at most 7 days (the limit of "
        "S3 signatures). Off: links point at this server's /files/ route, which streams from the store.",
    )

    @field_validator("image_store")
    @classmethod
    def _check_image_store(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        value = value.strip()
        match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/.*)?", value)
        if match is None:
            raise ValueError(
                "image_store must be s3://BUCKET or s3://BUCKET/PREFIX, with a valid bucket name "
                "(3-63 lower-case letters, digits, dots and hyphens)"
            )
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("s3_endpoint_url must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("s3_access_key_id", "s3_secret_access_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_s3(self) -> StorageSettings:
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(
                "set both s3_access_key_id and s3_secret_access_key, or neither (the AWS credential chain)"
            )
        if self.presigned_urls and self.image_store is None:
            raise ValueError("presigned_urls needs an s3:// image_store: local files have no presigned URLs")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="COGSERVE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    credentials: CredentialsSettings = Field(default_factory=CredentialsSettings)
    enhancer: EnhancerSettings = Field(default_factory=EnhancerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)

    @property
    def database_url(self) -> str:
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite:///{(self.storage.data_dir / 'cogserve.db').resolve()}"

    @property
    def builtin_model_dir(self) -> Path:
        return self.model.builtin_dir or self.storage.data_dir / "models"

    @property
    def server_key_file(self) -> Path:
        return self.auth.server_key_file or self.storage.data_dir / "server.key"

    @property
    def dev_credentials_dir(self) -> Path:
        """Where the self-signed development chain is made when no certificate is configured."""
        return self.storage.data_dir / "credentials"

    @property
    def images_dir(self) -> Path:
        return self.storage.data_dir / "images"
