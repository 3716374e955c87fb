"""Per-request context: a request id on every response, one access-log line, and the 500 net."""

from __future__ import annotations

import logging
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cogserve.api.errors import error_response
from cogserve.errors import CogserveError

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

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["request_id"] = new_request_id()
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = state["request_id"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", state["request_id"])
            if status:
                raise  # the response has begun; the server can only drop the connection
            error = CogserveError(f"internal error; request id {state['request_id']}")
            await error_response(error)(scope, receive, send_with_id)
        finally:
            access_log.info(
                "%s %s %s %d %.1fms %s",
                _client(scope),
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                state["request_id"],
            )


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"
