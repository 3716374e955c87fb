"""The one place where errors become HTTP responses: the exception handlers, and the renderer the
middleware (refusals before routing, the 500 net) and the connection's head deadline use too.

Paths under ``/v1/`` (the OpenAI-compatible API) get OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}`` (see ``openai_protocol.openai_error`` for the
mapping); every other path gets the BigModel envelope ``{"error": {"code", "message"}}``. The
business code of every error answer is kept in the request's state (``ERROR_CODE``) for metrics.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from cogserve.api.openai_protocol import openai_error
from cogserve.api.paths import is_openai
from cogserve.errors import CogserveError, InvalidField, InvalidRequest, MethodNotAllowed, NotFound

log = logging.getLogger(__name__)

#: The request-state key holding the business code of the error answered (for metrics).
ERROR_CODE = "error_code"


def envelope(error: CogserveError, path: str = "") -> tuple[int, dict[str, object], dict[str, str]]:
    """(status, body, headers) of the answer to ``error``, in the envelope of ``path``'s API."""
    # Both SDKs honour x-should-retry over their own status-based guess.
    headers = {"x-should-retry": "true" if error.retryable else "false", **error.headers}
    if is_openai(path):
        status, body = openai_error(error)
        return status, body.model_dump(), headers
    return error.status, {"error": {"code": error.code, "message": error.message}}, headers


def error_response(error: CogserveError, path: str = "", scope: Scope | None = None) -> JSONResponse:
    """The response for ``error``; with ``scope``, its code is noted in the request state."""
    if scope is not None:
        scope.setdefault("state", {})[ERROR_CODE] = error.code
    status, body, headers = envelope(error, path)
    return JSONResponse(body, status_code=status, headers=headers)


def api_path(scope: Scope) -> str:
    """The request's path below any mount prefix (root_path), which decides its error envelope."""
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _answer(request: Request, error: CogserveError) -> Response:
    return error_response(error, api_path(request.scope), request.scope)


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
    return _answer(request, exc)


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
    return _answer(request, error)


async def _validation_error(request: Request, exc: Exception) -> Response:
    # Only path and query parameters reach FastAPI's own validation; bodies are parsed by api.body.
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    field = str(first["loc"][-1]) if first.get("loc") else "parameter"
    return _answer(request, InvalidField(field, str(first.get("msg", "invalid"))))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CogserveError, _cogserve_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
