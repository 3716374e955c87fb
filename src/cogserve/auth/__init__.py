"""API keys, the Authorization header, per-key and per-user limits; knows nothing of HTTP."""

from cogserve.auth.crypto import SecretBox, load_or_create_server_key, parse_server_key
from cogserve.auth.identity import ApiKey
from cogserve.auth.keys import ApiKeys
from cogserve.auth.limits import Lease, Limiter, MemoryLimiter
from cogserve.auth.shared_limits import DatabaseLimiter
from cogserve.auth.tokens import TokenVerifier
from cogserve.auth.usage import Limits
from cogserve.errors import (
    AuthError,
    AuthExpired,
    AuthFailed,
    AuthInvalid,
    AuthMissing,
    AuthRevoked,
    ConcurrencyLimited,
    KeyUnreadable,
    LimitExceeded,
    RateLimited,
    UserBlocked,
)

__all__ = [
    "ApiKey",
    "ApiKeys",
    "AuthError",
    "AuthExpired",
    "AuthFailed",
    "AuthInvalid",
    "AuthMissing",
    "AuthRevoked",
    "ConcurrencyLimited",
    "DatabaseLimiter",
    "KeyUnreadable",
    "Lease",
    "LimitExceeded",
    "Limiter",
    "Limits",
    "MemoryLimiter",
    "RateLimited",
    "SecretBox",
    "TokenVerifier",
    "UserBlocked",
    "load_or_create_server_key",
    "parse_server_key",
]
