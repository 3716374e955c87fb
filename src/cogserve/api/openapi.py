"""The OpenAPI document: FastAPI's, made to say exactly what the handlers answer.

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

from cogserve.api.errors import OPENAI_PREFIX
from cogserve.api.openai import IMAGES_PATH as OPENAI_IMAGES_PATH
from cogserve.api.routes import API_KEY_SCHEME, ERROR_DESCRIPTIONS
from cogserve.api.routes import IMAGES_PATH as BIGMODEL_IMAGES_PATH
from cogserve.service.jobs import ASYNC_PATH
from cogserve.settings import Settings

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
    for path in (BIGMODEL_IMAGES_PATH, ASYNC_PATH, OPENAI_IMAGES_PATH):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        _settings_rules(body, settings, openai=path == OPENAI_IMAGES_PATH)
    return document


def _refine_responses(path: str, responses: dict[str, Any], extra: tuple[int, ...]) -> None:
    responses.pop("422", None)
    envelope = "OpenAIErrorEnvelope" if path.startswith(OPENAI_PREFIX + "/") else "ErrorEnvelope"
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
