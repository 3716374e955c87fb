"""The Authorization header, as the real SDKs build it and as attackers and clock skew bend it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import jwt
import pytest
import zai
import zai.core._jwt_token
import zhipuai
import zhipuai.core._jwt_token

from cogserve.api.errors import error_response
from cogserve.auth import (
    ApiKeys,
    AuthExpired,
    AuthFailed,
    AuthInvalid,
    AuthMissing,
    AuthRevoked,
    TokenVerifier,
)
from cogserve.errors import CogserveError
from cogserve.storage.accounts import AccountStore

BASE_URL = "http://cogserve.test/api/paas/v4"


def sdk_style_token(full_key: str, *, exp_ms: float, alg: str = "HS256", secret: str | None = None) -> str:
    key_id, real_secret = full_key.split(".")
    payload = {"api_key": key_id, "exp": int(exp_ms), "timestamp": int(time.time() * 1000)}
    return jwt.encode(payload, secret or real_secret, algorithm=alg, headers={"sign_type": "SIGN"})


def now_ms() -> float:
    return time.time() * 1000


def test_zhipuai_and_zai_tokens_are_accepted(keys: ApiKeys, verifier: TokenVerifier) -> None:
    key, full = keys.create("sdk")
    for generate in (zhipuai.core._jwt_token.generate_token, zai.core._jwt_token.generate_token):
        token = generate(full)
        assert token.count(".") == 2  # a real JWT, not the key
        assert verifier.verify(f"Bearer {token}").id == key.id


def _fake_server(verifier: TokenVerifier, seen: list[str]) -> httpx.MockTransport:
    """Just enough of the images route for an SDK to complete a call through the verifier."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        try:
            key = verifier.verify(request.headers.get("authorization"))
        except CogserveError as exc:
            response = error_response(exc)
            return httpx.Response(
                response.status_code, headers=dict(response.headers), content=bytes(response.body)
            )
        return httpx.Response(200, json={"created": 1, "data": [{"url": f"http://x/{key.name}.png"}]})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("sdk", ["zhipuai", "zai"])
@pytest.mark.parametrize("use_jwt", [False, True])
def test_the_sdks_authenticate_in_both_modes(
    keys: ApiKeys, verifier: TokenVerifier, sdk: str, use_jwt: bool
) -> None:
    _, full = keys.create("alice")
    seen: list[str] = []
    http = httpx.Client(transport=_fake_server(verifier, seen))
    client: Any
    if sdk == "zhipuai":
        client = zhipuai.ZhipuAI(
            api_key=full, base_url=BASE_URL, http_client=http, disable_token_cache=not use_jwt
        )
    else:
        client = zai.ZhipuAiClient(
            api_key=full, base_url=BASE_URL, http_client=http, disable_token_cache=not use_jwt
        )
    response = client.images.generations(model="cogview-4", prompt="a cat")
    assert response.data[0].url == "http://x/alice.png"
    assert (seen[0] == f"Bearer {full}") is not use_jwt


def test_a_revoked_key_fails_at_once_and_the_sdk_reports_1004(
    keys: ApiKeys, store: AccountStore, verifier: TokenVerifier
) -> None:
    key, full = keys.create("bob")
    client = zhipuai.ZhipuAI(
        api_key=full, base_url=BASE_URL, http_client=httpx.Client(transport=_fake_server(verifier, []))
    )
    client.images.generations(model="cogview-4", prompt="a cat")
    assert store.revoke_key(key.id)
    with pytest.raises(zhipuai.APIAuthenticationError, match='"1004"'):
        client.images.generations(model="cogview-4", prompt="a cat")
    with pytest.raises(AuthRevoked):
        verifier.verify(f"Bearer {zhipuai.core._jwt_token.generate_token(full)}")


def test_the_raw_key_is_accepted_with_any_case_of_bearer(keys: ApiKeys, verifier: TokenVerifier) -> None:
    key, full = keys.create()
    assert verifier.verify(f"Bearer {full}").id == key.id
    assert verifier.verify(f"bearer   {full} ").id == key.id


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_header_is_1001(verifier: TokenVerifier, header: str | None) -> None:
    with pytest.raises(AuthMissing) as caught:
        verifier.verify(header)
    assert (caught.value.status, caught.value.code) == (401, "1001")


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "local",  # a bare key without the scheme
        "Bearer local",  # the README's placeholder key, before keys existed
        "Bearer a.b.c.d",
        "Bearer " + "a" * 5000 + ".b",
        "Bearer ../../etc.passwd",
        "Bearer 0123456789abcdef01234567.not-the-secret",  # well-formed id that does not exist
    ],
)
def test_malformed_headers_and_unknown_ids_are_1002(verifier: TokenVerifier, header: str) -> None:
    with pytest.raises(AuthInvalid) as caught:
        verifier.verify(header)
    assert (caught.value.status, caught.value.code) == (401, "1002")


def test_a_wrong_secret_is_1000(keys: ApiKeys, verifier: TokenVerifier) -> None:
    key, full = keys.create()
    with pytest.raises(AuthFailed) as caught:
        verifier.verify(f"Bearer {key.id}.{full.split('.')[1][:-1]}x")
    assert (caught.value.status, caught.value.code) == (401, "1000")
    with pytest.raises(AuthFailed):
        verifier.verify(f"Bearer {sdk_style_token(full, exp_ms=now_ms() + 60_000, secret='guessed')}")


def test_a_revoked_key_with_a_wrong_secret_does_not_reveal_the_revocation(
    keys: ApiKeys, store: AccountStore, verifier: TokenVerifier
) -> None:
    key, full = keys.create()
    store.revoke_key(key.id)
    with pytest.raises(AuthFailed):
        verifier.verify(f"Bearer {key.id}.wrong")
    with pytest.raises(AuthRevoked) as caught:
        verifier.verify(f"Bearer {full}")
    assert (caught.value.status, caught.value.code) == (401, "1004")


def test_an_expired_token_is_1003_after_the_leeway(keys: ApiKeys, verifier: TokenVerifier) -> None:
    _, full = keys.create()
    # 20 s past exp is within the 30 s allowed for clock skew.
    assert verifier.verify(f"Bearer {sdk_style_token(full, exp_ms=now_ms() - 20_000)}")
    with pytest.raises(AuthExpired) as caught:
        verifier.verify(f"Bearer {sdk_style_token(full, exp_ms=now_ms() - 40_000)}")
    assert (caught.value.status, caught.value.code) == (401, "1003")


def test_the_sdk_token_expires_when_its_210_s_are_over(keys: ApiKeys) -> None:
    _, full = keys.create()
    token = zhipuai.core._jwt_token.generate_token(full)
    clock = [time.time()]
    verifier = TokenVerifier(keys, clock=lambda: clock[0])
    verifier.verify(f"Bearer {token}")
    clock[0] += 210 + 31
    with pytest.raises(AuthExpired):
        verifier.verify(f"Bearer {token}")


def test_exp_in_seconds_is_refused_with_a_message_saying_so(keys: ApiKeys, verifier: TokenVerifier) -> None:
    _, full = keys.create()
    with pytest.raises(AuthInvalid, match="milliseconds"):
        verifier.verify(f"Bearer {sdk_style_token(full, exp_ms=time.time() + 200)}")


def test_a_token_valid_for_too_long_is_refused(keys: ApiKeys, verifier: TokenVerifier) -> None:
    _, full = keys.create()
    assert verifier.verify(f"Bearer {sdk_style_token(full, exp_ms=now_ms() + 3600_000)}")
    with pytest.raises(AuthInvalid, match="future"):
        verifier.verify(f"Bearer {sdk_style_token(full, exp_ms=now_ms() + 86400_000)}")


def _segment(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_unsigned_and_other_algorithm_tokens_are_refused(keys: ApiKeys, verifier: TokenVerifier) -> None:
    key, full = keys.create()
    payload = _segment({"api_key": key.id, "exp": int(now_ms() + 60_000)})
    with pytest.raises(AuthInvalid, match="HS256"):
        verifier.verify(f"Bearer {_segment({'alg': 'none'})}.{payload}.")
    with pytest.raises(AuthInvalid, match="HS256"):
        verifier.verify(f"Bearer {sdk_style_token(full, exp_ms=now_ms() + 60_000, alg='HS512')}")


def test_a_token_whose_payload_was_changed_fails_its_signature(
    keys: ApiKeys, verifier: TokenVerifier
) -> None:
    _, full = keys.create()
    header, _, signature = sdk_style_token(full, exp_ms=now_ms() + 60_000).split(".")
    other, _ = keys.create("victim")
    forged = _segment({"api_key": other.id, "exp": int(now_ms() + 60_000)})
    with pytest.raises(AuthFailed):
        verifier.verify(f"Bearer {header}.{forged}.{signature}")


NOT_UTF8 = base64.urlsafe_b64encode(b"\xff\xfe").decode()
DEEPLY_NESTED = base64.urlsafe_b64encode(b"[" * 2000).decode()


@pytest.mark.parametrize(
    "token",
    [
        "!!!.e30.sig",
        f"{_segment([1, 2])}.e30.sig",
        f"{_segment({'alg': 'HS256'})}.{_segment({'exp': 1})}.sig",  # no api_key
        f"{_segment({'alg': 'HS256'})}.{_segment({'api_key': 'k', 'exp': 'soon'})}.sig",
        f"{_segment({'alg': 'HS256'})}.{DEEPLY_NESTED}.sig",
        f"{_segment({'alg': 'HS256'})}.{NOT_UTF8}.sig",
    ],
)
def test_garbage_tokens_are_1002_not_500(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(AuthInvalid):
        verifier.verify(f"Bearer {token}")


def signed_raw_token(full_key: str, payload_json: str) -> str:
    """A correctly signed HS256 token over ``payload_json`` as written (NaN, huge integers included)."""
    key_id, secret = full_key.split(".")
    header = _segment({"alg": "HS256", "sign_type": "SIGN"})
    payload = base64.urlsafe_b64encode(payload_json.replace("KEY", key_id).encode()).decode().rstrip("=")
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"


BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "9" * 401, "-1", "-" + "9" * 401, str(2**53 + 1)]


@pytest.mark.parametrize("claim", ["exp", "timestamp", "iat", "nbf"])
@pytest.mark.parametrize("number", BAD_NUMBERS)
def test_signed_tokens_with_non_finite_or_huge_numeric_claims_are_1002(
    keys: ApiKeys, verifier: TokenVerifier, claim: str, number: str
) -> None:
    _, full = keys.create()
    good = {"exp": int(now_ms() + 60_000), "timestamp": int(now_ms()), "iat": int(now_ms()), "nbf": 0}
    fields = [f'"{name}": {number if name == claim else value}' for name, value in good.items()]
    token = signed_raw_token(full, '{"api_key": "KEY", ' + ", ".join(fields) + "}")
    with pytest.raises(AuthInvalid) as refused:
        verifier.verify(f"Bearer {token}")
    assert error_response(refused.value).status_code == 401
    assert refused.value.code == "1002"


def test_a_token_with_every_numeric_claim_in_range_is_accepted(
    keys: ApiKeys, verifier: TokenVerifier
) -> None:
    key, full = keys.create()
    exp, now = int(now_ms() + 60_000), int(now_ms())
    token = signed_raw_token(
        full, f'{{"api_key": "KEY", "exp": {exp}, "timestamp": {now}, "iat": {now}, "nbf": {now}}}'
    )
    assert verifier.verify(f"Bearer {token}").id == key.id


def test_a_token_not_valid_before_a_future_nbf_is_refused(keys: ApiKeys, verifier: TokenVerifier) -> None:
    _, full = keys.create()
    exp, later = int(now_ms() + 600_000), int(now_ms() + 300_000)
    token = signed_raw_token(full, f'{{"api_key": "KEY", "exp": {exp}, "nbf": {later}}}')
    with pytest.raises(AuthInvalid, match="nbf"):
        verifier.verify(f"Bearer {token}")
