"""Every validation rule: the status, the business code, and the field named in the message."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import IMAGES

OK = {"model": "cogview-4", "prompt": "a cute kitten", "size": "512x512"}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in OK.items() if k != key}


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # (case id, body, business code, text the message must contain)
    ("model missing", without("model"), "1213", "model"),
    ("prompt missing", without("prompt"), "1213", "prompt"),
    ("model null", {**OK, "model": None}, "1213", "model"),
    ("prompt null", {**OK, "prompt": None}, "1213", "prompt"),
    ("unknown model", {**OK, "model": "cogview-3"}, "1211", "cogview-3"),
    ("empty model", {**OK, "model": ""}, "1211", "does not exist"),
    ("model not a string", {**OK, "model": 4}, "1214", "model"),
    ("empty prompt", {**OK, "prompt": ""}, "1214", "prompt"),
    ("blank prompt", {**OK, "prompt": "  \n "}, "1214", "prompt"),
    ("prompt with NUL", {**OK, "prompt": "a\x00b"}, "1214", "prompt"),
    ("prompt not a string", {**OK, "prompt": 12}, "1214", "prompt"),
    ("prompt a list", {**OK, "prompt": ["a", "b"]}, "1214", "prompt"),
    ("prompt too long", {**OK, "prompt": "猫" * 4001}, "1261", "4000"),
    ("quality unknown", {**OK, "quality": "ultra"}, "1214", "quality"),
    ("quality upper case", {**OK, "quality": "HD"}, "1214", "quality"),
    ("size not a string", {**OK, "size": 1024}, "1214", "size"),
    ("size below 512", {**OK, "size": "496x512"}, "1214", "size"),
    ("size above 2048", {**OK, "size": "2064x512"}, "1214", "size"),
    ("size past 2^21", {**OK, "size": "2048x1040"}, "1214", "size"),
    ("size not /16", {**OK, "size": "520x520"}, "1214", "size"),
    ("size trailing space", {**OK, "size": "1024x1024 "}, "1214", "size"),
    ("size full-width", {**OK, "size": "１０２４x１０２４"}, "1214", "size"),
    ("size 0x0", {**OK, "size": "0x0"}, "1214", "size"),
    ("size exponent", {**OK, "size": "1e3x512"}, "1214", "size"),
    ("user_id too short", {**OK, "user_id": "abcde"}, "1214", "user_id"),
    ("user_id too long", {**OK, "user_id": "u" * 129}, "1214", "user_id"),
    ("user_id not a string", {**OK, "user_id": 123456}, "1214", "user_id"),
    ("n is 2", {**OK, "n": 2}, "1214", "n"),
    ("n is 0", {**OK, "n": 0}, "1214", "n"),
    ("n as a string", {**OK, "n": "1"}, "1214", "n"),
    ("seed negative", {**OK, "seed": -1}, "1214", "seed"),
    ("seed float", {**OK, "seed": 1.5}, "1214", "seed"),
    ("seed too big", {**OK, "seed": 2**63}, "1214", "seed"),
    ("seed string", {**OK, "seed": "7"}, "1214", "seed"),
    ("response_format unknown", {**OK, "response_format": "png"}, "1214", "response_format"),
    ("watermark_enabled string", {**OK, "watermark_enabled": "yes"}, "1214", "watermark_enabled"),
    ("request_id with newline", {**OK, "request_id": "a\r\nSet-Cookie: x"}, "1214", "request_id"),
    ("request_id with space", {**OK, "request_id": "a b"}, "1214", "request_id"),
    ("request_id too long", {**OK, "request_id": "r" * 129}, "1214", "request_id"),
    ("request_id empty", {**OK, "request_id": ""}, "1214", "request_id"),
    ("sensitive_word_check a string", {**OK, "sensitive_word_check": "ALL"}, "1214", "sensitive_word_check"),
]


def table(cases: list[tuple[Any, ...]]) -> list[Any]:
    """Rows of (case id, *values) as pytest params named by their case id."""
    return [pytest.param(*values, id=case_id) for case_id, *values in cases]


@pytest.mark.parametrize(("body", "code", "text"), table(CASES))
def test_invalid_bodies(client: TestClient, body: dict[str, Any], code: str, text: str) -> None:
    response = client.post(IMAGES, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert text in error["message"]
    assert set(response.json()) == {"error"}


RAW_CASES = [
    ("malformed JSON", b'{"model": "cogview-4", "prompt": ', "application/json", 400),
    ("JSON array", b'[{"model": "cogview-4"}]', "application/json", 400),
    ("JSON string", b'"hello"', "application/json", 400),
    ("empty body", b"", "application/json", 400),
    ("form content type", b"model=cogview-4&prompt=x", "application/x-www-form-urlencoded", 400),
    ("text content type", b'{"model": "cogview-4", "prompt": "x"}', "text/plain", 400),
    ("no content type", b'{"model": "cogview-4", "prompt": "x"}', None, 400),
    ("not UTF-8", b'{"model": "cogview-4", "prompt": "\xff\xfe"}', "application/json", 400),
    ("body over 1 MiB", b'{"prompt": "' + b"a" * (1 << 20) + b'"}', "application/json", 413),
]


@pytest.mark.parametrize(("raw", "content_type", "status"), table(RAW_CASES))
def test_bodies_that_are_not_a_json_object(
    client: TestClient, raw: bytes, content_type: str | None, status: int
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(IMAGES, content=raw, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == "1210"


def test_json_with_charset_and_vendor_types_is_accepted(client: TestClient) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        response = client.post(
            IMAGES,
            content=b'{"model": "cogview-4", "prompt": "x", "size": "512x512"}',
            headers={"content-type": content_type},
        )
        assert response.status_code == 200, response.text


def test_refused_requests_store_nothing(client: TestClient) -> None:
    settings = client.app.state.cogserve.settings  # type: ignore[attr-defined]
    for body in ({**OK, "size": "496x512"}, {**OK, "model": "nope"}, without("prompt")):
        assert client.post(IMAGES, json=body).status_code == 400
    assert list(settings.images_dir.glob("**/*.png")) == []
