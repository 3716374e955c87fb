"""Checking the ``Authorization`` header the SDKs send.

Two forms, both ``Bearer``:
- the key itself, ``<id>.<secret>`` (zhipuai's and zai-sdk's default);
- a JWT the SDK signs with the secret (``disable_token_cache=False``): HS256, header
  ``{"alg": "HS256", "sign_type": "SIGN"}``, payload ``{"api_key": <id>, "exp": <ms>, "timestamp": <ms>}``.
  ``exp`` is in milliseconds, as BigModel defines it; the SDK makes tokens that live 210 s.

Verified by hand (about 30 lines of hmac) rather than with PyJWT, which would then be a runtime
dependency, and whose ``exp`` handling assumes seconds. Comparisons are constant-time. Checks run
in an order that tells a caller nothing it could not already know: the signature is checked before
revocation or expiry is reported.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cogserve.auth.identity import ApiKey
from cogserve.auth.keys import ApiKeys
from cogserve.errors import AuthError, AuthExpired, AuthFailed, AuthInvalid, AuthMissing, AuthRevoked

_MAX_TOKEN_CHARS = 4096
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# An exp below this (year 1973 in ms) is a token written with seconds, the JWT default.
_MIN_EXP_MS = 10**11
# Numeric claims a token may carry. Each must be a finite number in [0, 2**53] (JSON's exact integers):
# NaN makes every comparison false (a token that never expires) and a 400-digit integer overflows
# float arithmetic (a 500 rather than a 401).
_NUMERIC_CLAIMS = ("exp", "timestamp", "iat", "nbf")
_MAX_CLAIM = 2**53


class TokenVerifier:
    """Turns an ``Authorization`` header into the key it proves, or raises an ``AuthError``.

    ``leeway_s`` forgives clock skew between client and server; ``max_lifetime_s`` refuses JWTs
    whose ``exp`` is further ahead than that (a leaked long-lived token is almost a leaked key).
    """

    def __init__(
        self,
        keys: ApiKeys,
        *,
        leeway_s: float = 30.0,
        max_lifetime_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._leeway_ms = leeway_s * 1000
        self._max_lifetime_ms = max_lifetime_s * 1000
        self._clock = clock

    def verify(self, authorization: str | None) -> ApiKey:
        if authorization is None or not authorization.strip():
            raise AuthMissing("no Authorization header: send 'Authorization: Bearer <API key>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_CHARS:
            raise AuthInvalid("the Authorization header must be 'Bearer <API key or token>'")
        parts = token.split(".")
        if len(parts) == 2:
            return self._verify_key(*parts)
        if len(parts) == 3:
            return self._verify_jwt(*parts)
        raise AuthInvalid("invalid token: expected '<id>.<secret>' or a JWT")

    def _verify_key(self, key_id: str, secret: str) -> ApiKey:
        key, stored = self._lookup(key_id)
        with _claiming(key.id):
            if not hmac.compare_digest(secret.encode(), stored):
                raise AuthFailed("authentication failed: wrong secret for this API key")
            return _active(key)

    def _verify_jwt(self, header_b64: str, payload_b64: str, signature_b64: str) -> ApiKey:
        header = _json_segment(header_b64, "header")
        if header.get("alg") != "HS256":
            raise AuthInvalid("invalid token: only HS256 tokens are accepted")
        payload = _json_segment(payload_b64, "payload")
        key_id = payload.get("api_key")
        if not isinstance(key_id, str):
            raise AuthInvalid("invalid token: the payload has no api_key")
        if "exp" not in payload:
            raise AuthInvalid("invalid token: the payload has no numeric exp")
        claims = _numeric_claims(payload)
        exp = claims["exp"]

        key, secret = self._lookup(key_id)
        with _claiming(key.id):
            key = self._check_jwt(key, secret, header_b64, payload_b64, signature_b64, exp)
            if "nbf" in claims and claims["nbf"] > self._clock() * 1000 + self._leeway_ms:
                raise AuthInvalid("invalid token: not valid yet (nbf is in the future)")
            return key

    def _check_jwt(
        self, key: ApiKey, secret: bytes, header_b64: str, payload_b64: str, signature_b64: str, exp: float
    ) -> ApiKey:
        expected = hmac.new(secret, f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _b64url(signature_b64, "signature")):
            raise AuthFailed("authentication failed: the token's signature does not match the API key")
        key = _active(key)

        now_ms = self._clock() * 1000
        if exp < _MIN_EXP_MS:
            raise AuthInvalid("invalid token: exp must be in milliseconds since the epoch")
        if now_ms > exp + self._leeway_ms:
            raise AuthExpired("authentication token expired")
        if exp - now_ms > self._max_lifetime_ms + self._leeway_ms:
            raise AuthInvalid(
                f"invalid token: exp is more than {self._max_lifetime_ms / 1000:.0f} s in the future"
            )
        return key

    def _lookup(self, key_id: str) -> tuple[ApiKey, bytes]:
        found = self._keys.lookup(key_id)
        if found is None:
            raise AuthInvalid("invalid API key: no such key id")
        return found


@contextmanager
def _claiming(key_id: str) -> Iterator[None]:
    """Name the existing key a failed credential claimed, so the audit row can say whose it was."""
    try:
        yield
    except AuthError as exc:
        exc.key_id = key_id
        raise


def _active(key: ApiKey) -> ApiKey:
    if key.revoked_at is not None:
        raise AuthRevoked("authentication failed for this token: the API key was revoked")
    return key


def _b64url(segment: str, what: str) -> bytes:
    if not _B64URL.fullmatch(segment):
        raise AuthInvalid(f"invalid token: the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise AuthInvalid(f"invalid token: the {what} is not base64url") from None


def _numeric_claims(payload: dict[str, Any]) -> dict[str, float]:
    """The numeric claims present in ``payload``, each checked finite and in range, or ``AuthInvalid``."""
    claims: dict[str, float] = {}
    for name in _NUMERIC_CLAIMS:
        if name not in payload:
            continue
        value = payload[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AuthInvalid(f"invalid token: {name} must be a number")
        if not (0 <= value <= _MAX_CLAIM):  # NaN fails this too; inf and huge ints are out of range
            raise AuthInvalid(f"invalid token: {name} is not a number in range")
        claims[name] = value
    return claims


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        # Python's json accepts NaN and Infinity, which JSON does not.
        value = json.loads(_b64url(segment, what), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise AuthInvalid(f"invalid token: the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise AuthInvalid(f"invalid token: the {what} is not a JSON object")
    return value
