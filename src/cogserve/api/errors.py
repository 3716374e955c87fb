"""The one place where errors become HTTP responses.

Paths under ``/v1/`` (the OpenAI-compatible API) get OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}`` (see ``openai_protocol.openai_error`` for the
mapping); every other path gets the BigModel envelope ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from cogserve.api.openai_protocol import openai_error
from cogserve.errors import CogserveError, InvalidField, InvalidRequest, MethodNotAllowed, NotFound

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1"


def error_response(error: CogserveError, path: str = "") -> JSONResponse:
    """The response for ``error``, in the envelope of the API that ``path`` belongs to."""
    # Both SDKs honour x-should-retry over their own status-based guess.
    headers = {"x-should-retry": "true" if error.retryable else "false", **error.headers}
    if path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/"):
        status, envelope = openai_error(error)
        return JSONResponse(envelope.model_dump(), status_code=status, headers=headers)
    body = {"error": {"code": error.code, "message": error.message}}
    return JSONResponse(body, status_code=error.status, headers=headers)


def api_path(request: Request) -> str:
    """The request's path below any mount prefix (root_path), which decides its error envelope."""
    path = request.url.path
    root = str(request.scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


async def _cogserve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CogserveError)
    if exc.status >= 500:
        # A stack trace helps with a failure (500), not with a timeout or an overload.
        log.error(
            "request %s failed: %s",
            getattr(request.state, "request_id", "-"),
            exc.message,
            exc_info=exc if exc.status == 500 else None,
        )
    return error_response(exc, api_path(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette raises these for routing failures: unknown path, wrong method.
    assert isinstance(exc, StarletteHTTPException)
    error: CogserveError
    if exc.status_code == 404:
        error = NotFound(f"no such API: {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(
            f"method {request.method} is not allowed on {request.url.path}", headers=dict(exc.headers or {})
        )
    else:
        error = InvalidRequest(str(exc.detail))
        error.status = exc.status_code
    return error_response(error, api_path(request))


async def _validation_error(request: Request, exc: Exception) -> Response:
    # Only path and query parameters reach FastAPI's own validation; bodies are parsed by api.body.
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    field = str(first["loc"][-1]) if first.get("loc") else "parameter"
    return error_response(InvalidField(field, str(first.get("msg", "invalid"))), api_path(request))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CogserveError, _cogserve_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
