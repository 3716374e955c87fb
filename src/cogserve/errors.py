"""cogserve's one exception tree.

Every error a client can see is a ``CogserveError``: it carries the HTTP status and the BigModel
business code (a string in the wire envelope ``{"error": {"code": ..., "message": ...}}``). The API
maps the tree to responses in exactly one handler; everything below the API raises these, and
translates foreign errors (torch, PIL, SQLAlchemy, OS) at its boundary with ``raise ... from exc``.
The auth codes are BigModel's published ones; a revoked key gets 1004 only after its secret or
signature checked out, so a caller who merely knows a key id cannot learn whether it was revoked.

    CogserveError (500 / 500)
    ├── InvalidRequest (400 / 1210)        malformed JSON, wrong content type, bad body
    │   ├── BodyTooLarge (413 / 1210)
    │   ├── BodyTimeout (408 / 1210)       the body did not arrive within body_timeout_s
    │   ├── HeadTimeout (408 / 1210)       the request head did not arrive within header_timeout_s
    │   ├── UrlTooLong (414 / 1210)
    │   ├── UnsupportedEncoding (415 / 1210) any Content-Encoding: bodies are never inflated
    │   ├── HeadersTooLarge (431 / 1210)
    │   ├── MissingField (400 / 1213)
    │   ├── InvalidField (400 / 1214)
    │   ├── UnknownModel (400 / 1211)
    │   ├── UnknownAdapter (400 / 1211)    a LoRA adapter that is not served; lists the ones that are
    │   ├── ContentBlocked (400 / 1301)   the prompt or the image failed moderation
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
    │   └── StorageUnavailable (503 / 1305) the database is locked or unreachable; retry shortly
    ├── AuthError (401 / 1000)
    │   ├── AuthFailed (401 / 1000)        right key id, wrong secret or bad JWT signature
    │   ├── AuthMissing (401 / 1001)       no Authorization header
    │   ├── AuthInvalid (401 / 1002)       not "Bearer <token>", malformed token, unknown key id
    │   ├── AuthExpired (401 / 1003)       the JWT's exp has passed
    │   └── AuthRevoked (401 / 1004)       a correctly signed token of a revoked key
    ├── LimitExceeded (429)                Retry-After header; retryable while a retry can help
    │   ├── ConcurrencyLimited (429 / 1302) too many requests in flight
    │   └── RateLimited (429 / 1303)       too many requests in the last minute
    ├── UserBlocked (403 / 1112)           the end user's user_id is blocked; never retried
    ├── AdapterForbidden (403 / 1220)      the API key may not use this LoRA adapter
    ├── KeyUnreadable (500 / 500)          a stored secret does not decrypt under the server key
    └── ConfigError (—)                    bad settings or model folder, at start-up
"""

from __future__ import annotations

import math


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


class BodyTimeout(InvalidRequest):
    """The client did not deliver its body in time: stalled, or sent less than its Content-Length."""

    status = 408


class HeadTimeout(InvalidRequest):
    """The client did not deliver its request line and headers in time (a slow-loris)."""

    status = 408


class UrlTooLong(InvalidRequest):
    status = 414


class UnsupportedEncoding(InvalidRequest):
    """A compressed (or otherwise encoded) body: refused unread, never inflated."""

    status = 415


class HeadersTooLarge(InvalidRequest):
    status = 431


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


class UnknownAdapter(InvalidRequest):
    """A LoRA adapter the server does not serve. 1211 ("model does not exist"): an adapter is a
    variant of the model, and on /v1 it may be named as the model itself. 400, not OpenAI's 404 for
    an unknown model: the route exists, one field of the body is wrong."""

    code = "1211"


class PromptTooLong(InvalidRequest):
    code = "1261"


class ContentBlocked(InvalidRequest):
    code = "1301"
    #: BigModel's own wording for 1301, so clients that match on it keep working.
    SEED_MESSAGE = (
        "系统检测到输入或生成内容可能包含不安全或敏感内容，请您避免输入易产生敏感内容的提示语，感谢您的配合。"
    )

    def __init__(self, where: str) -> None:
        super().__init__(f"{self.SEED_MESSAGE} (unsafe or sensitive content detected in the {where})")


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


class StorageUnavailable(StorageError):
    """The database did not answer (down, unreachable, locked past its busy timeout).

    503 and retryable, unlike a plain StorageError: nothing is wrong with the request and the same
    call succeeds once the database is back, which the pool notices on its next checkout.
    """

    status, code, retryable = 503, "1305", True

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class AuthError(CogserveError):
    status, code = 401, "1000"
    #: The existing key a failed credential named (wrong secret, bad signature, expired, revoked),
    #: for the audit log; None when the token named no key that exists. Never sent to the client.
    key_id: str | None = None


class AuthFailed(AuthError):
    code = "1000"


class AuthMissing(AuthError):
    code = "1001"


class AuthInvalid(AuthError):
    code = "1002"


class AuthExpired(AuthError):
    code = "1003"


class AuthRevoked(AuthError):
    code = "1004"


# zhipuai retries a 429 three times within about 3.5 s (0.5 s backoff, doubling) and ignores
# Retry-After; when the wait is longer those retries are certain to fail, so say so.
_SDK_RETRY_SPAN_S = 4


class LimitExceeded(CogserveError):
    status = 429

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        super().__init__(message, headers={"Retry-After": str(self.retry_after_s)})
        self.retryable = self.retry_after_s <= _SDK_RETRY_SPAN_S


class ConcurrencyLimited(LimitExceeded):
    code = "1302"


class RateLimited(LimitExceeded):
    code = "1303"


class UserBlocked(CogserveError):
    """403 rather than the platform's 429 for account locks: a block is not a limit that waiting
    lifts, and 429 would make the SDKs raise ``APIReachLimitError`` and retry. 1112 is BigModel's
    "account locked" code, the nearest published meaning."""

    status, code, retryable = 403, "1112", False


class AdapterForbidden(CogserveError):
    """1220, BigModel's "no permission for" code: the key is valid, but limited to other adapters
    (``cogserve keys create --loras``). 403: retrying cannot help."""

    status, code, retryable = 403, "1220", False


class KeyUnreadable(CogserveError):
    """The server key is not the one the key was created with, or the row was altered."""

    status, code = 500, "500"


class ConfigError(CogserveError):
    """Settings or model files that make start-up impossible; reported by the CLI, never over HTTP."""
