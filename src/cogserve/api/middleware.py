"""Per-request context: a request id on every response, one access-log line, the 500 net, and the
limits the HTTP server does not set (header size, URL length, time to deliver the body)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cogserve.api.errors import ERROR_CODE, api_path, error_response
from cogserve.errors import BodyTimeout, CogserveError, HeadersTooLarge, UrlTooLong
from cogserve.metrics import Metrics
from cogserve.settings import ServerSettings

access_log = logging.getLogger("cogserve.access")
log = logging.getLogger(__name__)


def new_request_id() -> str:
    return "req-" + secrets.token_hex(12)


# The rest of the request may still be on the wire: answer and close rather than read it.
_CLOSE = {"Connection": "close"}


class RequestContextMiddleware:
    """Outermost of cogserve's middleware.

    It catches any exception nothing else handled, logs its stack trace with the request id and
    answers 500 in the envelope of the path's API, so a client never sees a traceback or a bare body.
    Routes may replace ``request.state.request_id`` (the generation route adopts the client's).
    Before routing it refuses oversized headers (431) and request targets (414), and it gives the
    body ``body_timeout_s`` to arrive (408), limits uvicorn does not set (httptools parses headers
    of any size and waits for a body for ever).
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics | None = None, server: ServerSettings | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.server = server

    def _limits(self, scope: Scope) -> ServerSettings:
        if self.server is None:
            # Not given: the settings the app was built with (create_app keeps them on its state).
            ctx = getattr(getattr(scope.get("app"), "state", None), "cogserve", None)
            settings = getattr(ctx, "settings", None)
            self.server = settings.server if settings is not None else ServerSettings()
        return self.server

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

        limits = self._limits(scope)
        try:
            refusal = _refusal(scope, limits)
            if refusal is not None:
                await error_response(refusal, api_path(scope), scope)(scope, receive, send_with_id)
                return
            await self.app(scope, _body_deadline(receive, limits.body_timeout_s), send_with_id)
        except Exception as exc:
            if status:
                log.exception("unhandled error in request %s", state["request_id"])
                raise  # the response has begun; the server can only drop the connection
            if isinstance(exc, CogserveError) and exc.status < 500:
                # A client's fault that surfaced outside a route (e.g. the body deadline while an
                # outer layer read the body): answer it as such, not as an internal error.
                error = exc
            else:
                log.exception("unhandled error in request %s", state["request_id"])
                error = CogserveError(f"internal error; request id {state['request_id']}")
            await error_response(error, api_path(scope), scope)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.request(_route(scope), scope["method"], status, _code(status, state), elapsed)
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


def _refusal(scope: Scope, limits: ServerSettings) -> CogserveError | None:
    """Requests refused before any route sees them: oversized headers or request target."""
    header_bytes = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    if header_bytes > limits.max_header_bytes:
        return HeadersTooLarge(
            f"request headers total {header_bytes} bytes; the limit is {limits.max_header_bytes}",
            headers=_CLOSE,
        )
    target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
    if target > limits.max_url_bytes:
        return UrlTooLong(
            f"request target is {target} bytes; the limit is {limits.max_url_bytes}", headers=_CLOSE
        )
    return None


def _body_deadline(receive: Receive, timeout_s: float) -> Receive:
    """``receive``, raising ``BodyTimeout`` if the body is not complete ``timeout_s`` from now.

    uvicorn has no body timeout: a client that sends half a body (or a Content-Length larger than
    what it sends) and then waits would hold the request, and what it allocated, for ever. Once the
    body is complete, later receives (the disconnect watch during a generation) are not limited.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    body_done = False

    async def receive_by_deadline() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(
                f"the request body did not arrive within {timeout_s:g} s", headers=_CLOSE
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return receive_by_deadline


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _route(scope: Scope) -> str:
    # The route template (/files/{name}), not the path: one series per route, not per image.
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def _code(status: int, state: dict[str, object]) -> str:
    """The business code of an error answer (noted by api.errors when it rendered it), "" for a success."""
    if status < 400:
        return ""
    return str(state.get(ERROR_CODE) or status)
