"""The wire: request and response bodies of the BigModel images API (and the health checks), and
their conversion.

The descriptions here feed ``/docs``. A request model turns itself into a service request
(``to_request``); validation failures turn into cogserve errors (``validation_error``).
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cogserve.engine import GenerationParams
from cogserve.engine.lora import NAME_PATTERN
from cogserve.errors import CogserveError, InvalidField, MissingField, PromptTooLong, UnknownModel
from cogserve.service import ImageRequest
from cogserve.service.sizes import DEFAULT_SIZE, RECOMMENDED_SIZES, Size
from cogserve.settings import ModelSettings

MAX_SEED = 2**63 - 1
# Visible ASCII only: request_id is echoed in the X-Request-Id header, so no spaces, no CR/LF.
REQUEST_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"

# Patterns below only document (in the OpenAPI schema) what the validators enforce; each is written
# with escapes that mean the same in ECMA-262 and Python regexes, the two dialects clients use.
#: No NUL anywhere (``no_nul``).
NO_NUL_PATTERN = r"^[^\x00]*$"
#: The syntax ``parse_size`` accepts; its range, multiple-of-16 and pixel rules are in the description.
SIZE_SYNTAX = "[0-9]{1,5}x[0-9]{1,5}"
SIZE_PATTERN = f"^{SIZE_SYNTAX}$"


def _blank_class() -> str:
    """A regex class of NUL and every character ``str.strip()`` removes (``str.isspace``)."""
    points = [0, *(c for c in range(0x3001) if chr(c).isspace())]
    ranges: list[tuple[int, int]] = []
    for point in points:
        if ranges and point == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], point)
        else:
            ranges.append((point, point))
    return "".join(f"\\u{lo:04x}" if lo == hi else f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in ranges)


#: ``prompt_rules``: at least one character that is not blank, and no NUL.
PROMPT_PATTERN = f"^[^\\x00]*[^{_blank_class()}][^\\x00]*$"

_SCHEMA_KEYWORDS_KEPT_OUTSIDE = frozenset({"title", "description", "default", "examples"})


def _optional_fields_take_null(schema: dict[str, Any]) -> None:
    """Document ``_null_is_absent``: every optional field also accepts JSON null."""
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if name in required:
            continue
        branches = prop.pop("anyOf", None)
        # Constraints (a field-level pattern, say) go with the value's branch, not beside the null one.
        inner = {key: prop.pop(key) for key in list(prop) if key not in _SCHEMA_KEYWORDS_KEPT_OUTSIDE}
        if isinstance(branches, list):
            values = [branch for branch in branches if branch != {"type": "null"}]
            branches = [{**branch, **inner} for branch in values]
        else:
            branches = [inner]
        prop["anyOf"] = [*branches, {"type": "null"}]


class WireRequest(BaseModel):
    """What every request body shares: strict types, unknown fields ignored, null = absent."""

    # strict: "1" is not an int and "true" is not a bool. Unknown fields are ignored, because the
    # SDKs shallow-merge arbitrary ``extra_body`` keys into the body.
    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra=_optional_fields_take_null)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # The SDKs send an argument passed as None as JSON null: the default must apply.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


#: Most adapters one request may combine, and the scales each may take (negative: the opposite way).
MAX_LORAS = 4
MIN_LORA_SCALE, MAX_LORA_SCALE = -2.0, 2.0


class LoraSpec(WireRequest):
    """One LoRA adapter of a request."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="The adapter's name, as GET /v1/models lists it (letters, digits, _ and -; not a path).",
    )
    scale: float = Field(
        1.0,
        ge=MIN_LORA_SCALE,
        le=MAX_LORA_SCALE,
        description=f"How strongly it applies, {MIN_LORA_SCALE:g}..{MAX_LORA_SCALE:g}: 1 as trained, 0 off, "
        "negative the opposite way.",
    )


LORAS_DESCRIPTION = (
    f"cogserve extension: up to {MAX_LORAS} LoRA adapters of the server's (GET /v1/models lists them, "
    "with parent = the served model), each with a scale; their effects add up. Requests batch only with "
    "the same adapters and scales. An unknown name is refused (400/1211) with the names served; a key "
    "limited to other adapters gets 403/1220."
)


def lora_pairs(loras: list[LoraSpec] | None) -> tuple[tuple[str, float], ...]:
    return tuple((lora.name, float(lora.scale)) for lora in loras or ())


def distinct_loras(value: list[LoraSpec] | None) -> list[LoraSpec] | None:
    names = [lora.name for lora in value or ()]
    if len(set(names)) != len(names):
        raise ValueError("an adapter may be named only once")
    return value


class ImageGenerationRequest(WireRequest):
    """Body of ``POST /api/paas/v4/images/generations``. A field sent as ``null`` counts as absent."""

    model: str = Field(
        description="Model code: cogview-4 or cogview-4-250304 (configurable).",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    prompt: str = Field(
        description="Text description of the image, Chinese or English; not blank, no NUL.",
        json_schema_extra={"pattern": PROMPT_PATTERN},
    )
    quality: Literal["standard", "hd"] = Field(
        "standard", description="standard: fewer denoising steps, faster; hd: more steps, finer detail."
    )
    size: str = Field(
        DEFAULT_SIZE,
        description="WIDTHxHEIGHT. Recommended: " + ", ".join(RECOMMENDED_SIZES) + ". Custom: each side "
        "512..2048 px and divisible by 16, width*height <= 2^21 px.",
        json_schema_extra={"pattern": SIZE_PATTERN, "examples": list(RECOMMENDED_SIZES)},
    )
    user_id: str | None = Field(
        None,
        min_length=6,
        max_length=128,
        description="End user's id (6..128 characters).",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    request_id: str | None = Field(
        None,
        pattern=REQUEST_ID_PATTERN,
        description="Client's id for this call (1..128 visible ASCII characters); echoed as `id`, "
        "`request_id` and the X-Request-Id header. Generated when absent.",
    )
    response_format: Literal["url", "b64_json"] = Field(
        "url", description="url: a link valid for the image lifetime; b64_json: the PNG inline."
    )
    n: int = Field(1, description="Number of images; only 1 is supported.", json_schema_extra={"const": 1})
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="cogserve extension: the same seed and request give the same pixels. Random when absent.",
    )
    user: str | None = Field(
        None,
        max_length=256,
        description="Sent by the SDK; recorded.",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    style: str | None = Field(
        None,
        max_length=64,
        description="Sent by the SDK; recorded, no effect.",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    sensitive_word_check: dict[str, Any] | None = Field(
        None, description="Sent by the SDK; recorded (moderation always applies)."
    )
    watermark_enabled: bool | None = Field(
        None,
        description="false asks for an image without the visible label and invisible mark; only an API key "
        "allowed to (or open mode) may. Recorded with the image.",
    )
    enhance_prompt: bool | None = Field(
        None,
        description="cogserve extension: rewrite the prompt into a detailed caption with the operator's "
        "enhancer before generating (CogView4's recommendation for short prompts). Absent: the operator's "
        "default. If the enhancer fails, the prompt is used as sent and X-Prompt-Enhancement says why.",
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

    @field_validator("model", "user_id", "user", "style")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return no_nul(value)

    @field_validator("size")
    @classmethod
    def _size_rules(cls, value: str) -> str:
        return Size.parse(value)

    @field_validator("n")
    @classmethod
    def _only_one(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    def to_request(self, settings: ModelSettings, request_id: str) -> ImageRequest:
        if self.model not in settings.codes:
            raise UnknownModel(f"model '{self.model}' does not exist; available: {', '.join(settings.codes)}")
        if len(self.prompt) > settings.max_prompt_chars:
            raise PromptTooLong(
                f"prompt is {len(self.prompt)} characters; the limit is {settings.max_prompt_chars}"
            )
        # Validation made a sent ``size`` a Size (parsed once, there); the default is parsed here.
        size = self.size if isinstance(self.size, Size) else Size.parse(self.size)
        steps = settings.hd_steps if self.quality == "hd" else settings.standard_steps
        seed = self.seed if self.seed is not None else secrets.randbelow(2**32)
        return ImageRequest(
            request_id=request_id,
            model=self.model,
            quality=self.quality,
            response_format=self.response_format,
            params=GenerationParams(
                prompt=self.prompt,
                width=size.width,
                height=size.height,
                steps=steps,
                guidance_scale=settings.guidance_scale,
                seed=seed,
                loras=lora_pairs(self.loras),
            ),
            user_id=self.user_id,
            user=self.user,
            style=self.style,
            sensitive_word_check=self.sensitive_word_check,
            watermark_enabled=self.watermark_enabled,
            enhance_prompt=self.enhance_prompt,
        )


class PromptEnhanceRequest(WireRequest):
    """Body of ``POST /api/paas/v4/images/enhance`` (cogserve extension)."""

    prompt: str = Field(
        description="The prompt to rewrite, Chinese or English; not blank, no NUL.",
        json_schema_extra={"pattern": PROMPT_PATTERN},
    )
    user_id: str | None = Field(
        None,
        min_length=6,
        max_length=128,
        description="End user's id (6..128 characters); recorded in the audit log.",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        return prompt_rules(value)

    @field_validator("user_id")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return no_nul(value)

    def check_length(self, settings: ModelSettings) -> None:
        if len(self.prompt) > settings.max_prompt_chars:
            raise PromptTooLong(
                f"prompt is {len(self.prompt)} characters; the limit is {settings.max_prompt_chars}"
            )


#: Response bodies list every key they may hold: a stray key (another API's envelope) is a bug.
CLOSED = ConfigDict(json_schema_extra={"additionalProperties": False})


class ContentFilterEntry(BaseModel):
    model_config = CLOSED

    role: Literal["user", "assistant", "history"] = Field(
        description="Where the check applied: user input, model output (assistant) or history."
    )
    level: int = Field(ge=0, le=3, description="Severity, 0 most severe .. 3 slight.")


class ImageData(BaseModel):
    model_config = CLOSED

    url: str | None = Field(None, description="Link to the PNG, valid until the image expires.")
    b64_json: str | None = Field(None, description="The PNG, base64 (response_format=b64_json).")
    revised_prompt: str | None = Field(
        None,
        description="The enhancer's rewrite the image was made from; null when the prompt was used as "
        "sent (not asked for, or the enhancer failed).",
    )


class ImageGenerationResponse(BaseModel):
    model_config = CLOSED

    created: int = Field(description="Unix time in seconds.")
    data: list[ImageData] = Field(description="The generated images (one).")
    content_filter: list[ContentFilterEntry] = Field(description="Safety checks applied.")
    id: str = Field(description="Id of this call: the request_id if one was sent.")
    request_id: str = Field(description="The request_id sent, or the generated one.")


class PromptEnhanceResponse(BaseModel):
    model_config = CLOSED

    prompt: str = Field(description="The prompt as sent.")
    revised_prompt: str | None = Field(
        description="The enhancer's rewrite, moderated; null when enhancement failed (see fallback)."
    )
    fallback: str | None = Field(
        description="Why there is no rewrite: disabled (no enhancer configured), unavailable, timeout, "
        "bad_response, empty, too_long, wrong_language or not_a_prompt; null with a rewrite."
    )
    cached: bool = Field(description="Whether the rewrite came from the cache of earlier rewrites.")
    request_id: str = Field(description="Id of this call, as in the X-Request-Id header.")


class ErrorBody(BaseModel):
    model_config = CLOSED

    code: str = Field(description="BigModel business code, e.g. 1214.")
    message: str = Field(description="What went wrong, naming the field when one is at fault.")


class ErrorEnvelope(BaseModel):
    model_config = CLOSED

    error: ErrorBody


class AsyncImageGenerationRequest(ImageGenerationRequest):
    """Body of ``POST /api/paas/v4/async/images/generations``: the sync body, plus a webhook."""

    response_format: Literal["url", "b64_json"] = Field(
        "url",
        description="url only: fetch the image from the result's url once the job succeeds.",
        json_schema_extra={"enum": ["url"]},
    )
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="cogserve extension: where to POST the final result (the async-result body). Only "
        "hosts the operator allows (--webhook-allow); retried with backoff until a 2xx answer.",
    )

    @field_validator("response_format")
    @classmethod
    def _urls_only(cls, value: str) -> str:
        if value != "url":
            raise ValueError("async jobs answer with URLs only; fetch the image from the result's url")
        return value


class AsyncTask(BaseModel):
    model_config = CLOSED

    id: str = Field(description="The job's id: poll GET /api/paas/v4/async-result/{id}.")
    request_id: str = Field(description="The request_id sent, or the generated one.")
    model: str = Field(description="The model code asked for.")
    task_status: Literal["PROCESSING", "SUCCESS", "FAIL"] = Field(
        description="PROCESSING while queued or running, then SUCCESS or FAIL."
    )


class AsyncResult(AsyncTask):
    state: Literal["queued", "running", "success", "fail"] = Field(
        description="cogserve extension: task_status in finer steps."
    )
    progress: int = Field(
        ge=0, le=100, description="Percent done, from the denoising steps; 100 when stored."
    )
    queue_position: int | None = Field(
        None,
        description="While queued: 1 starts next. Under --ray, the place in the queue of the model "
        "replica that holds the job (each replica orders its own queue).",
    )
    created: int | None = Field(None, description="On SUCCESS: Unix time in seconds the image was made.")
    image_result: list[ImageData] | None = Field(None, description="On SUCCESS: the image (BigModel's name).")
    data: list[ImageData] | None = Field(
        None, description="On SUCCESS: the image, as the sync call names it."
    )
    content_filter: list[ContentFilterEntry] | None = Field(None, description="On SUCCESS: safety checks.")
    error: ErrorBody | None = Field(None, description="On FAIL: the business code and message.")


def no_nul(value: str | None) -> str | None:
    # PostgreSQL cannot store NUL in text, and no legitimate name or id holds one.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def prompt_rules(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    no_nul(value)
    return value


def validation_error(exc: ValidationError) -> CogserveError:
    """The first failure of a body, as the BigModel error for it (1213 missing, 1214 invalid)."""
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "missing":
        return MissingField(field)
    reason = str(first["msg"]).removeprefix("Value error, ")
    return InvalidField(field, reason)


class Health(BaseModel):
    model_config = CLOSED

    status: Literal["ok"] = Field(description="Always ok: the process answers.")


class Readiness(BaseModel):
    model_config = CLOSED

    status: Literal["ready"] = Field(description="Always ready (a 503 otherwise).")
    model: str = Field(description="The loaded pipeline's name.")
    builtin: bool = Field(description="Whether it is a built-in model (shapes or tiny-random).")
    device: str = Field(description="Where it runs, e.g. cuda:0 or cpu.")
    dtype: str = Field(description="Its weights' dtype.")
    queued: int = Field(description="Images waiting in the scheduler's queue.")
    running: int = Field(description="Images in the pipeline call now running.")
    batches: int = Field(description="Pipeline calls so far.")
    batched_images: int = Field(description="Images generated by those calls.")
    replicas: dict[str, dict[str, int]] | None = Field(
        None, description="With Ray: per model replica, its own counts."
    )


class CredentialsAnswer(BaseModel):
    model_config = CLOSED

    present: bool = Field(description="Whether the image carries a C2PA manifest at all.")
    state: str | None = Field(
        None,
        description="c2pa's verdict: Trusted (valid, signer on the trust list), Valid (signature and "
        "hash binding check out; signer on no trust list, e.g. a development certificate) or Invalid.",
    )
    valid: bool = Field(False, description="Signature and hash binding check out (state Valid or Trusted).")
    trusted: bool = Field(False, description="The signer chains to a trust anchor the server's reader has.")
    signature_valid: bool = Field(False, description="The claim signature verifies.")
    binding_valid: bool = Field(False, description="The hash of the image bytes matches the manifest.")
    ai_generated: bool = Field(
        False, description="The manifest says trainedAlgorithmicMedia (made by a trained model)."
    )
    failures: list[str] = Field(default_factory=list, description="c2pa's failure codes, if any.")
    claims: dict[str, Any] = Field(
        default_factory=dict,
        description="What the manifest says: generator, action, digital_source_type, model, image_id, "
        "server, signed_by, issuer (prompt and user_id only when the operator puts them in).",
    )
