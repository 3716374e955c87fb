"""The OpenAPI document: the helpers routes declare their answers with, and FastAPI's document made
to say exactly what the handlers answer.

FastAPI cannot know three things, so they are written in here once the document is built:
- cogserve never answers 422 (validation failures are 400s in the route's envelope, api.errors),
  yet FastAPI documents one for every operation with parameters;
- answers no route makes: the middleware refuses an oversized request target (414) or headers
  (431) before routing and turns any unexpected failure into a 500, each in the route's envelope;
  an operation that reads a body refuses a compressed one (415) or one that stalls (408);
- every answer carries headers FastAPI does not see (X-Request-Id; x-should-retry on errors;
  Retry-After on 429 and some 503s);
- some rules come from settings: the model codes a request may name, the longest prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from cogserve.api.paths import ASYNC_PATH, ENHANCE_PATH, IMAGES_PATH, OPENAI_IMAGES_PATH, is_openai
from cogserve.api.protocol import ErrorEnvelope
from cogserve.settings import Settings

#: What each error status means, in the document (``refine`` adds the headers).
ERROR_DESCRIPTIONS = {
    400: "Bad request: the body is not a JSON object, a field is missing or invalid, the model is "
    "unknown, the prompt is too long, or moderation blocked it.",
    401: "No API key, or an invalid, expired or revoked one (only when the server requires keys).",
    403: "The end user (user_id) is blocked by the operator.",
    404: "No such resource (or no such path).",
    408: "The request body did not arrive within server.body_timeout_s; the connection closes.",
    413: "The request body is larger than server.max_body_bytes.",
    414: "The request target (path and query) is longer than server.max_url_bytes.",
    415: "The body is compressed (Content-Encoding): send it uncompressed.",
    429: "A rate or concurrency limit, or the scheduler's queue, is full; retry after Retry-After seconds.",
    500: "An unexpected failure (storage, pipeline); the message holds the request id.",
    503: "The model is still loading (Retry-After) or the server is shutting down.",
    504: "The image was not ready within the request timeout.",
    431: "The request headers total more than server.max_header_bytes.",
}

#: An operation that takes an API key: required once the server requires keys, ignored in open mode.
API_KEY_SCHEME = "apiKey"
KEY_SECURITY: dict[str, Any] = {"security": [{API_KEY_SCHEME: []}, {}]}


def error_responses(
    *statuses: int, model: type[BaseModel] = ErrorEnvelope
) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of an operation: each status with its envelope and meaning."""
    return {status: {"model": model, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The ``openapi_extra`` of an operation that takes an API key and a JSON body of ``model``.

    Routes read their body themselves (``api.dependencies``: strict JSON, cogserve's 400s), so
    FastAPI does not see it and it is declared here.
    """
    return {
        **KEY_SECURITY,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
    }


_UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")
#: Statuses any request may get (api.middleware), and those of any request with a body (api.body).
_ANY_REQUEST = (414, 431, 500)
_BODY_REQUEST = (400, 408, 413, 415)
_REQUEST_ID = {
    "description": "The request's id: the client's request_id where the body had one, else generated.",
    "required": True,
    "schema": {"type": "string"},
}
_SHOULD_RETRY = {
    "description": "Whether an SDK should retry this error (both official SDKs honour it).",
    "required": True,
    "schema": {"type": "string", "enum": ["true", "false"]},
}


def _retry_after(required: bool) -> dict[str, Any]:
    return {
        "description": "Seconds to wait before retrying.",
        "required": required,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` (and so /openapi.json and /docs) return the refined document."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = refine(build(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def refine(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.get("schemas", {})
    for name in _UNUSED_SCHEMAS:
        schemas.pop(name, None)
    components["securitySchemes"] = {
        API_KEY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key '<id>.<secret>', or an HS256 JWT signed with one (BigModel's style). "
            "Needed once the server requires keys (--require-auth, or as soon as any key exists); "
            "ignored in open mode.",
        }
    }
    for path, item in document.get("paths", {}).items():
        for operation in item.values():
            extra = (*_ANY_REQUEST, *(_BODY_REQUEST if "requestBody" in operation else ()))
            _refine_responses(path, operation["responses"], extra)
    for path in (IMAGES_PATH, ASYNC_PATH, OPENAI_IMAGES_PATH):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        _settings_rules(body, settings, openai=path == OPENAI_IMAGES_PATH)
    for path in (IMAGES_PATH, ASYNC_PATH, OPENAI_IMAGES_PATH, ENHANCE_PATH):
        headers = document["paths"][path]["post"]["responses"]["200"]["headers"]
        headers["X-Prompt-Enhancement"] = _ENHANCEMENT
    enhance = document["paths"][ENHANCE_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    enhance["properties"]["prompt"]["maxLength"] = settings.model.max_prompt_chars
    return document


_ENHANCEMENT = {
    "description": "When the request wanted prompt enhancement: 'enhanced', 'enhanced; cache=hit', or "
    "'fallback; reason=<why>' when the prompt was used as sent (disabled, unavailable, timeout, "
    "bad_response, empty, too_long, wrong_language, not_a_prompt).",
    "schema": {"type": "string"},
}


def _refine_responses(path: str, responses: dict[str, Any], extra: tuple[int, ...]) -> None:
    responses.pop("422", None)
    envelope = "OpenAIErrorEnvelope" if is_openai(path) else "ErrorEnvelope"
    for code in extra:
        responses.setdefault(
            str(code),
            {
                "description": ERROR_DESCRIPTIONS[code],
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{envelope}"}}},
            },
        )
    ordered = sorted(responses.items(), key=lambda item: int(item[0]))
    responses.clear()
    responses.update(ordered)
    for status, response in responses.items():
        headers = response.setdefault("headers", {})
        headers["X-Request-Id"] = _REQUEST_ID
        if int(status) >= 400:
            headers["x-should-retry"] = _SHOULD_RETRY
        if status == "429":
            headers["Retry-After"] = _retry_after(required=True)
        elif status == "503":
            headers["Retry-After"] = _retry_after(required=False)


def _settings_rules(body: dict[str, Any], settings: Settings, *, openai: bool) -> None:
    properties = body["properties"]
    codes = list(settings.model.codes)
    if openai:
        # Absent, null and "" all mean the default model.
        string = next(branch for branch in properties["model"]["anyOf"] if branch.get("type") == "string")
        string["enum"] = [*codes, ""]
    else:
        properties["model"]["enum"] = codes
    properties["prompt"]["maxLength"] = settings.model.max_prompt_chars
