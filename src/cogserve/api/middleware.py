"""Per-request context: a request id on every response, one access-log line, and the 500 net."""

from __future__ import annotations

import json
import logging
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cogserve.api.errors import error_response
from cogserve.errors import CogserveError
from cogserve.metrics import Metrics

access_log = logging.getLogger("cogserve.access")
log = logging.getLogger(__name__)


def new_request_id() -> str:
    return "req-" + secrets.token_hex(12)


class RequestContextMiddleware:
    """Outermost of cogserve's middleware.

    It catches any exception nothing else handled, logs its stack trace with the request id and
    answers 500 in the BigModel envelope, so a client never sees a traceback or a bare text body.
    Routes may replace ``request.state.request_id`` (the generation route adopts the client's).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["request_id"] = new_request_id()
        started = time.perf_counter()
        status = 0
        error_body = bytearray()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = state["request_id"]
            elif message["type"] == "http.response.body" and status >= 400 and len(error_body) < 4096:
                error_body.extend(message.get("body", b"")[:4096])
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", state["request_id"])
            if status:
                raise  # the response has begun; the server can only drop the connection
            error = CogserveError(f"internal error; request id {state['request_id']}")
            await error_response(error, scope["path"])(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.request(
                    _route(scope), scope["method"], status, _code(status, bytes(error_body)), elapsed
                )
            access_log.info(
                "%s %s %s %d %.1fms %s",
                _client(scope),
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                state["request_id"],
                # Fields of their own in --log-format json.
                extra={
                    "request_id": state["request_id"],
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _route(scope: Scope) -> str:
    # The route template (/files/{name}), not the path: one series per route, not per image.
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def _code(status: int, body: bytes) -> str:
    """The business code of an error answer (either envelope), "" for a success."""
    if status < 400:
        return ""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(status)
    return str(code) if code is not None else str(status)
