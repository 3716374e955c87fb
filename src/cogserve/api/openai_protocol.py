"""The wire of the OpenAI-compatible routes (``/v1/...``): bodies, their conversion, and the error envelope.

The descriptions here feed ``/docs``. The request turns itself into one service job per image
(``to_requests``), reusing the BigModel request's conversion so steps, guidance and seeds come from
settings in one place. ``openai_error`` renders cogserve's error tree in OpenAI's envelope.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from cogserve.api.protocol import (
    CLOSED,
    LORAS_DESCRIPTION,
    MAX_LORAS,
    MAX_SEED,
    NO_NUL_PATTERN,
    PROMPT_PATTERN,
    SIZE_SYNTAX,
    ImageData,
    ImageGenerationRequest,
    LoraSpec,
    WireRequest,
    distinct_loras,
    no_nul,
    prompt_rules,
)
from cogserve.engine.lora import AdapterInfo
from cogserve.errors import (
    AdapterForbidden,
    AuthError,
    BodyTooLarge,
    CogserveError,
    ContentBlocked,
    InvalidField,
    InvalidRequest,
    LimitExceeded,
    MissingField,
    PromptTooLong,
    QueueFull,
    RequestTimeout,
    ServiceUnavailable,
    UnknownAdapter,
    UnknownModel,
    UserBlocked,
)
from cogserve.service import ImageRequest
from cogserve.service.sizes import DEFAULT_SIZE, Size
from cogserve.settings import ModelSettings

MAX_N = 4
#: What ``GET /v1/models`` reports as ``created``: CogView-4's release (2025-03-04, the 250304 code).
MODEL_CREATED = 1741046400
OpenAIQuality = Literal["standard", "hd", "low", "medium", "high", "xhigh", "max", "auto"]
# cogserve has two step counts; OpenAI's upper levels map onto the finer one.
_HD_LEVELS = frozenset({"hd", "high", "xhigh", "max"})


class OpenAIImageRequest(WireRequest):
    """Body of ``POST /v1/images/generations``. A field sent as ``null`` counts as absent; fields
    cogserve does not act on (style, background, output_format, moderation, ...) are ignored."""

    model: str | None = Field(
        None,
        description="Model code, one of GET /v1/models (absent, null or empty: the first, cogview-4). A LoRA "
        "adapter listed there may be named too: the served model with that adapter at scale 1.",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    prompt: str = Field(
        description="Text description of the image, Chinese or English; not blank, no NUL.",
        json_schema_extra={"pattern": PROMPT_PATTERN},
    )
    n: int = Field(
        1, ge=1, le=MAX_N, description=f"Number of images, 1..{MAX_N}; they are generated as one batch."
    )
    size: str = Field(
        DEFAULT_SIZE,
        description="WIDTHxHEIGHT, each side 512..2048 px and divisible by 16, width*height <= 2^21 px "
        "(e.g. 1024x1024, 1792x1024, 1536x1024, 512x512); auto = 1024x1024. 256x256 is too small.",
        json_schema_extra={
            "pattern": f"^({SIZE_SYNTAX}|auto)$",
            "examples": ["auto", "1024x1024", "1792x1024", "1536x1024", "512x512"],
        },
    )
    quality: OpenAIQuality = Field(
        "standard",
        description="hd, high, xhigh and max: more denoising steps (cogserve's hd); standard, low, medium "
        "and auto: fewer steps, faster (cogserve's standard).",
    )
    response_format: Literal["url", "b64_json"] = Field(
        "url", description="url: a link valid for the image lifetime; b64_json: the PNG inline."
    )
    user: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="End user's id: per-user limits and operator blocks apply to it.",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    safety_identifier: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="OpenAI's newer name for the end user's id; wins over `user` when both are sent.",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED - (MAX_N - 1),
        description="cogserve extension: image i gets seed+i, so the same seed and request give the "
        "same pixels. Random when absent.",
    )

    enhance_prompt: bool | None = Field(
        None,
        description="cogserve extension: rewrite the prompt with the operator's enhancer first; the "
        "rewrite comes back as each image's `revised_prompt`. Absent: the operator's default.",
    )

    loras: list[LoraSpec] | None = Field(None, max_length=MAX_LORAS, description=LORAS_DESCRIPTION)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        return prompt_rules(value)

    @field_validator("loras")
    @classmethod
    def _distinct_loras(cls, value: list[LoraSpec] | None) -> list[LoraSpec] | None:
        return distinct_loras(value)

    @field_validator("model", "user", "safety_identifier")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return no_nul(value)

    @field_validator("size")
    @classmethod
    def _size_rules(cls, value: str) -> str:
        if value == "auto":
            return Size.parse(DEFAULT_SIZE)
        try:
            return Size.parse(value)
        except ValueError as exc:
            # OpenAI clients often ask for 256x256; say what cogserve takes instead.
            raise ValueError(f"{exc}; cogserve sizes: each side 512..2048 px, divisible by 16") from None

    @property
    def user_id(self) -> str | None:
        return self.safety_identifier or self.user

    def to_requests(
        self, settings: ModelSettings, request_id: str, adapters: Collection[str] = ()
    ) -> list[ImageRequest]:
        """One service request per image: the BigModel conversion (model check, prompt length, steps, seed),
        then seed+i for image i. ``adapters``: the LoRA adapters served, which ``model`` may name."""
        model, loras = self.model or settings.codes[0], list(self.loras or ())
        if model not in settings.codes and model in adapters:
            if any(lora.name == model for lora in loras):
                raise InvalidField("loras", f"'{model}' is already the model; name it only once")
            if len(loras) >= MAX_LORAS:
                raise InvalidField("loras", f"at most {MAX_LORAS} adapters, the model's included")
            model, loras = settings.codes[0], [LoraSpec.model_construct(name=model, scale=1.0), *loras]
        base = ImageGenerationRequest.model_construct(
            model=model,
            loras=loras,
            prompt=self.prompt,
            quality="hd" if self.quality in _HD_LEVELS else "standard",
            size=self.size,
            response_format=self.response_format,
            seed=self.seed,
            user_id=self.user_id,
            enhance_prompt=self.enhance_prompt,
        )
        try:
            first = base.to_request(settings, request_id)
        except UnknownModel:
            raise unknown_model(base.model, settings) from None
        return [
            replace(first, params=replace(first.params, seed=first.params.seed + i)) for i in range(self.n)
        ]


def unknown_model(model: str, settings: ModelSettings) -> UnknownModel:
    """OpenAI's wording, plus the codes that would work."""
    return UnknownModel(f"The model '{model}' does not exist; available: {', '.join(settings.codes)}")


class OpenAIImagesResponse(BaseModel):
    model_config = CLOSED

    created: int = Field(description="Unix time in seconds.")
    # The same item as the BigModel answer's: {url} or {b64_json}.
    data: list[ImageData] = Field(description="The generated images, n of them, in seed order.")


class LoraDetails(BaseModel):
    model_config = CLOSED

    rank: int = Field(description="The adapter's rank (r).")
    alpha: float = Field(description="Its lora_alpha; a scale of 1 applies alpha/rank times its product.")
    size_bytes: int = Field(description="Size of its weights file.")
    targets: list[str] = Field(description="Kinds of layer it changes, e.g. attn1.to_q.")
    format: Literal["peft", "diffusers"] = Field(description="peft (CogKit's layout) or diffusers.")


class OpenAIModel(BaseModel):
    model_config = CLOSED

    id: str = Field(description="The model code (or LoRA adapter name) to send as `model`.")
    object: Literal["model"] = Field("model", description="Always 'model'.")
    created: int = Field(
        MODEL_CREATED, description="Unix time of the model's release (an adapter's: its file's)."
    )
    owned_by: str = Field("cogserve", description="Always 'cogserve'.")
    parent: str | None = Field(
        None, description="A LoRA adapter's: the model code it applies to (OpenAI's fine-tune convention)."
    )
    lora: LoraDetails | None = Field(None, description="cogserve extension: a LoRA adapter's details.")


def adapter_model(adapter: AdapterInfo, parent: str) -> OpenAIModel:
    """A LoRA adapter as a /v1/models entry: a fine-tune of ``parent``, OpenAI's way."""
    return OpenAIModel(
        id=adapter.name,
        created=max(0, adapter.stamp[0] // 10**9),  # the weights' mtime
        parent=parent,
        lora=LoraDetails(
            rank=adapter.rank,
            alpha=adapter.alpha,
            size_bytes=adapter.size_bytes,
            targets=list(adapter.targets),
            format=adapter.format,
        ),
    )


class OpenAIModelList(BaseModel):
    model_config = CLOSED

    object: Literal["list"] = Field("list", description="Always 'list'.")
    data: list[OpenAIModel] = Field(description="Every model code this server accepts.")


class OpenAIErrorBody(BaseModel):
    model_config = CLOSED

    message: str = Field(description="What went wrong, naming the field when one is at fault.")
    type: str = Field(
        description="invalid_request_error, permission_error, requests (rate limits) or server_error."
    )
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(description="Machine-readable reason, e.g. model_not_found, invalid_value.")


class OpenAIErrorEnvelope(BaseModel):
    model_config = CLOSED

    error: OpenAIErrorBody


# First match wins, so subclasses come before their parents.
_KINDS: tuple[tuple[type[CogserveError], str, str | None], ...] = (
    (UnknownModel, "invalid_request_error", "model_not_found"),
    (UnknownAdapter, "invalid_request_error", "adapter_not_found"),
    (AdapterForbidden, "permission_error", "adapter_not_allowed"),
    (MissingField, "invalid_request_error", "missing_required_parameter"),
    (InvalidField, "invalid_request_error", "invalid_value"),
    (PromptTooLong, "invalid_request_error", "string_above_max_length"),
    (ContentBlocked, "invalid_request_error", "content_policy_violation"),
    (BodyTooLarge, "invalid_request_error", "request_too_large"),
    (AuthError, "invalid_request_error", "invalid_api_key"),
    (UserBlocked, "permission_error", "user_blocked"),
    (LimitExceeded, "requests", "rate_limit_exceeded"),
    (QueueFull, "requests", "rate_limit_exceeded"),
    (ServiceUnavailable, "server_error", "service_unavailable"),
    (RequestTimeout, "server_error", "timeout"),
    (InvalidRequest, "invalid_request_error", None),
)


def openai_error(error: CogserveError) -> tuple[int, OpenAIErrorEnvelope]:
    """Status and OpenAI envelope ``{"error": {"message", "type", "param", "code"}}`` for an error.

    The status is cogserve's own, except UnknownModel, which OpenAI answers with 404:

        error                          status  type                   code
        UnknownModel                   404     invalid_request_error  model_not_found       (param model)
        UnknownAdapter                 400     invalid_request_error  adapter_not_found     (param loras)
        AdapterForbidden               403     permission_error       adapter_not_allowed   (param loras)
        MissingField                   400     invalid_request_error  missing_required_parameter (param)
        InvalidField                   400     invalid_request_error  invalid_value         (param)
        PromptTooLong                  400     invalid_request_error  string_above_max_length (param prompt)
        ContentBlocked                 400     invalid_request_error  content_policy_violation
        BodyTooLarge                   413     invalid_request_error  request_too_large
        other InvalidRequest           400     invalid_request_error  null
        AuthError (all five)           401     invalid_request_error  invalid_api_key
        UserBlocked                    403     permission_error       user_blocked
        LimitExceeded, QueueFull       429     requests               rate_limit_exceeded
        ServiceUnavailable             503     server_error           service_unavailable
        RequestTimeout                 504     server_error           timeout
        NotFound, MethodNotAllowed     404/405 invalid_request_error  null
        anything else (500)            500     server_error           null
    """
    status = 404 if isinstance(error, UnknownModel) else error.status
    kind = next(((kind, code) for cls, kind, code in _KINDS if isinstance(error, cls)), None)
    if kind is None:
        kind = ("invalid_request_error", None) if status < 500 else ("server_error", None)
    param: str | None = None
    if isinstance(error, MissingField | InvalidField):
        param = error.field
    elif isinstance(error, UnknownModel):
        param = "model"
    elif isinstance(error, UnknownAdapter | AdapterForbidden):
        param = "loras"
    elif isinstance(error, PromptTooLong):
        param = "prompt"
    body = OpenAIErrorBody(message=error.message, type=kind[0], param=param, code=kind[1])
    return status, OpenAIErrorEnvelope(error=body)
