"""cogserve's one exception tree.

Every error a client can see is a ``CogserveError``: it carries the HTTP status and the BigModel
business code (a string in the wire envelope ``{"error": {"code": ..., "message": ...}}``). The API
maps the tree to responses in exactly one handler; everything below the API raises these, and
translates foreign errors (torch, PIL, SQLAlchemy, OS) at its boundary with ``raise ... from exc``.

    CogserveError (500 / 500)
    ├── InvalidRequest (400 / 1210)        malformed JSON, wrong content type, bad body
    │   ├── BodyTooLarge (413 / 1210)
    │   ├── MissingField (400 / 1213)
    │   ├── InvalidField (400 / 1214)
    │   ├── UnknownModel (400 / 1211)
    │   └── PromptTooLong (400 / 1261)
    ├── NotFound (404 / 1222)              unknown route, unknown or expired image
    ├── MethodNotAllowed (405 / 1222)
    ├── ServiceUnavailable (503 / 1305)    model still loading, or shutting down
    ├── QueueFull (429 / 1305)             the scheduler's queue is full; retry after Retry-After
    ├── RequestTimeout (504 / 1230)        not done within request_timeout_s; not retried by SDKs
    ├── Interrupted (499 / —)              the client went away; logged, never sent
    ├── GenerationFailed (500 / 1230)      the pipeline raised
    │   └── OutOfMemory (500 / 1230)       the device ran out of memory, even for this image alone
    ├── StorageError (500 / 500)           disk or database failed
    └── ConfigError (—)                    bad settings or model folder, at start-up
"""

from __future__ import annotations


class CogserveError(Exception):
    status: int = 500
    code: str = "500"
    #: Whether an SDK should retry. zhipuai retries 5xx and 429 unless told ``x-should-retry: false``.
    retryable: bool = False

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class InvalidRequest(CogserveError):
    status, code = 400, "1210"


class BodyTooLarge(InvalidRequest):
    status = 413


class MissingField(InvalidRequest):
    code = "1213"

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} not received: the field '{field}' is required")
        self.field = field


class InvalidField(InvalidRequest):
    code = "1214"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}")
        self.field = field


class UnknownModel(InvalidRequest):
    code = "1211"


class PromptTooLong(InvalidRequest):
    code = "1261"


class NotFound(CogserveError):
    status, code = 404, "1222"


class MethodNotAllowed(CogserveError):
    status, code = 405, "1222"


class ServiceUnavailable(CogserveError):
    status, code, retryable = 503, "1305", True


class QueueFull(CogserveError):
    status, code, retryable = 429, "1305", True


class RequestTimeout(CogserveError):
    # 504, not 500: the request was valid and nothing broke; the server ran out of time for it.
    # Not retryable: an SDK retry would queue the same heavy work again behind the backlog.
    status, code = 504, "1230"


class Interrupted(CogserveError):
    """Work stopped because nobody wants its result any more (client gone, deadline passed)."""

    status, code = 499, "499"


class GenerationFailed(CogserveError):
    status, code = 500, "1230"


class OutOfMemory(GenerationFailed):
    pass


class StorageError(CogserveError):
    status, code = 500, "500"


class ConfigError(CogserveError):
    """Settings or model files that make start-up impossible; reported by the CLI, never over HTTP."""
