"""The one typed Settings object.

Values come from, in order of precedence: explicit overrides (the CLI's flags), environment
variables (prefix ``COGSERVE_``, nested areas joined by ``__``, e.g. ``COGSERVE_MODEL__PATH``), then
the defaults below. Only ``cli`` and ``api.app`` build it; everything else receives it explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DType = Literal["auto", "bf16", "fp32"]


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, description="Port to bind.")
    public_url: str | None = Field(
        None,
        description="Base URL that image links start with, e.g. https://img.example.com. "
        "Unset: the address the request reached, honouring X-Forwarded-* from trusted proxies.",
    )
    forwarded_allow_ips: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Peers whose X-Forwarded-Proto/Host/Prefix headers are trusted ('*' for any).",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted.")

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
        "cache. Unset: the built-in tiny pipeline with random weights.",
    )
    allow_download: bool = Field(False, description="Let a repo id be downloaded from the hub.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: DType = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32")
    codes: list[str] = Field(
        default_factory=lambda: ["cogview-4", "cogview-4-250304"],
        description="Model codes a request may name; all map to the loaded pipeline.",
    )
    standard_steps: int = Field(20, ge=1, le=200, description="Denoising steps for quality=standard.")
    hd_steps: int = Field(50, ge=1, le=200, description="Denoising steps for quality=hd.")
    guidance_scale: float = Field(3.5, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    max_prompt_chars: int = Field(4000, ge=1, description="Longest prompt accepted, in characters.")
    warmup: bool = Field(True, description="Run one small generation before reporting ready.")
    builtin_dir: Path | None = Field(
        None, description="Where the built-in tiny model is saved. Unset: <data_dir>/models."
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _refuse_fp16(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in {"fp16", "float16", "half"}:
            raise ValueError(
                "fp16 is not supported: CogView4 overflows in float16 (black or NaN images); "
                "use bf16 (CUDA) or fp32"
            )
        return value


class StorageSettings(BaseModel):
    data_dir: Path = Field(Path("cogserve-data"), description="Images, metadata DB and built-in model.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the metadata DB. Unset: SQLite file in the data dir."
    )
    image_ttl_days: float = Field(30.0, gt=0, description="How long an image URL stays valid.")
    sweep_interval_s: float = Field(600.0, gt=0, description="How often the server deletes expired images.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="COGSERVE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
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
    def images_dir(self) -> Path:
        return self.storage.data_dir / "images"
