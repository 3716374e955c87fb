"""A catalogue of hostile input: each request gets its documented status and error envelope, and the
server is still healthy afterwards.

Most cases run in-process (one app for the module, driven by a TestClient) from the tables below. What
needs real sockets (oversized headers as uvicorn parses them, lying Content-Length, slow bodies,
compressed bodies over the wire, raw paths a client library would normalise) runs against one live
``cogserve serve`` per module.

Conventions the catalogue pins down:
- BigModel routes answer ``{"error": {"code", "message"}}``; ``/v1`` routes answer OpenAI's
  ``{"error": {"message", "type", "param", "code"}}`` (the ``code`` column is then OpenAI's code).
- Duplicate keys in a JSON object: the last one wins (Python's ``json``), for every field.
- A case whose field should be *accepted* adds a wrong-typed sentinel in the last field of the body
  (``watermark_enabled``; ``seed`` on ``/v1``): fields are validated in order and the first failure
  is reported, so an answer naming the sentinel proves every field before it passed.
- Measured uvicorn (httptools) behaviour, outside cogserve's reach: no header-size limit of its own
  (cogserve's middleware answers 431 past ``max_header_bytes``), request targets of 64 KiB and more
  refused with a bare ``400 text/plain``, malformed framing (bad Content-Length, CR/NUL in headers,
  unknown methods) likewise; no timeout while a client sends its headers, which cogserve's own
  protocol (``api.connection``) adds: ``header_timeout_s``, then 408 and close.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cogserve.api import create_app
from cogserve.engine import Engine
from cogserve.settings import Settings
from tests.conftest import TEST_STEPS, wait_ready
from tests.e2e.conftest import Server, start_server, stop_server

IMAGES = "/api/paas/v4/images/generations"
ASYNC = "/api/paas/v4/async/images/generations"
RESULT = "/api/paas/v4/async-result"
OPENAI = "/v1/images/generations"
JSON_CT: tuple[tuple[str, str | bytes], ...] = (("content-type", "application/json"),)
OK: dict[str, Any] = {"model": "cogview-4", "prompt": "a cute kitten", "size": "512x512"}
OK_OPENAI: dict[str, Any] = {"prompt": "a cute kitten", "size": "512x512"}
UNKNOWN_IMAGE = "A" * 32  # the shape of an image id, but no such image
UNKNOWN_JOB = "job-" + "0" * 32
BODY_TIMEOUT_S = 2.0  # the live server's body_timeout_s
HEADER_TIMEOUT_S = 2.0  # and its header_timeout_s


@dataclass(frozen=True)
class Case:
    status: int
    #: BigModel business code, or on /v1 the OpenAI envelope's ``code`` (None where OpenAI has none).
    code: str | None
    #: Text the message must contain.
    text: str = ""
    body: bytes | None = None
    path: str = IMAGES
    method: str = "POST"
    headers: tuple[tuple[str, str | bytes], ...] = field(default=JSON_CT)


def dumps(data: Any) -> bytes:
    """UTF-8 JSON as a client would send it (non-ASCII raw, not escaped)."""
    return json.dumps(data, ensure_ascii=False).encode()


def bm(**fields: Any) -> bytes:
    return dumps({**OK, **fields})


def oa(**fields: Any) -> bytes:
    return dumps({**OK_OPENAI, **fields})


def invalid(field_name: str, body: bytes, path: str = IMAGES, text: str = "") -> Case:
    """A field refused: 1214 naming it (BigModel), or invalid_value with it as param (/v1)."""
    code = "invalid_value" if path.startswith("/v1") else "1214"
    return Case(400, code, text or f"invalid {field_name}", body, path)


def accepted(path: str = IMAGES, **fields: Any) -> Case:
    """Every given field passes validation: the wrong-typed sentinel in the last field is reported."""
    if path.startswith("/v1"):
        return Case(400, "invalid_value", "invalid seed", oa(**fields, seed="sentinel"), path)
    return Case(400, "1214", "invalid watermark_enabled", bm(**fields, watermark_enabled="sentinel"), path)


def raw(
    body: bytes, status: int = 400, code: str | None = "1210", text: str = "", path: str = IMAGES
) -> Case:
    if path.startswith("/v1") and code == "1210":
        code = None  # a body that is no JSON object: OpenAI's envelope has no code for it
    return Case(status, code, text, body, path)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def nested_list(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def gzip_bomb(megabytes: int) -> bytes:
    """``megabytes`` MiB of zeros, gzipped (about 1/1000 of that on the wire)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(megabytes)) + compressor.flush()


BOMB = gzip_bomb(64)
SENTINEL = {"watermark_enabled": "sentinel"}

# -- wrong types for every field ---------------------------------------------------------------
# (test_validation covers: model 4, prompt 12 / list, size 1024, user_id int, n "1", seed 1.5 / "7",
#  watermark_enabled "yes", sensitive_word_check "ALL"; these are the other types.)
WRONG_TYPES_BM: dict[str, list[Any]] = {
    "model": [True, 4.5, ["cogview-4"], {"code": "cogview-4"}],
    "prompt": [True, 1.5, {"text": "a cat"}],
    "quality": [True, 1, ["hd"], {}],
    "size": [True, 512.0, ["512x512"], {"width": 512}],
    "user_id": [True, 123456.0, ["abcdefg"], {}],
    "request_id": [True, 7, ["r"], {}],
    "response_format": [True, 0, ["url"], {}],
    "n": [True, 1.0, [1], {}],
    "seed": [True, 7.0, [7], {}],
    "user": [True, 1, ["u"], {}],
    "style": [True, 1, ["s"], {}],
    "sensitive_word_check": [True, 1, ["ALL"]],
    "watermark_enabled": [1, 0, "true", ["x"], {}],
}
WRONG_TYPES_OPENAI: dict[str, list[Any]] = {
    "model": [True, 4, ["cogview-4"]],
    "prompt": [True, 5, ["a"]],
    "n": [True, 1.0, [1]],
    "size": [True, 512, ["512x512"]],
    "quality": [True, 1, ["hd"]],
    "response_format": [True, 1, ["url"]],
    "user": [True, 1, ["u"]],
    "safety_identifier": [True, 1, ["u"]],
    "seed": [True, 1.5, "7"],
}
WRONG_TYPES_ASYNC: dict[str, list[Any]] = {
    "webhook_url": [True, 1, ["http://example.com/hook"]],
    "n": [True],
    "size": [512],
}


def _type_name(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value)[:20]}"


CASES: list[Any] = []


def add(case_id: str, case: Case) -> None:
    CASES.append(pytest.param(case, id=case_id))


for name, values in WRONG_TYPES_BM.items():
    for value in values:
        add(f"bm {name} as {_type_name(value)}", invalid(name, bm(**{name: value})))
for name, values in WRONG_TYPES_OPENAI.items():
    for value in values:
        add(f"v1 {name} as {_type_name(value)}", invalid(name, oa(**{name: value}), OPENAI))
for name, values in WRONG_TYPES_ASYNC.items():
    for value in values:
        add(f"async {name} as {_type_name(value)}", invalid(name, bm(**{name: value}), ASYNC))

# -- sizes: ASCII digits and a lower-case x only, each side 512..2048, /16, <= 2^21 px ----------------
BAD_SIZES_BM = [
    "1024X1024",
    "1024×1024",  # multiplication sign
    "-512x512",
    "512x-512",
    "+512x512",
    "512.0x512",
    "99999x99999",
    "4096x4096",
    "2048x2048",
    "512x512x512",
    "x",
    "",
    "512x",
    "0x512",
    " 512x512",
    "512 x 512",
    "512x512\n",
    "512x512\x00",
    "٥١٢x٥١٢",  # Arabic-Indic digits: Python's \d would take them
    "00000512x512",
    "0x1p9x512",
]
for size in BAD_SIZES_BM:
    add(f"bm size {size!r}", invalid("size", bm(size=size)))
for size in ["1024x1024 ", "１０２４x１０２４", "0x0", "1e3x512", "1024X1024", "AUTO", "auto ", "256x256"]:
    add(f"v1 size {size!r}", invalid("size", oa(size=size), OPENAI))
for size in ["1024x1024 ", "１０２４x１０２４", "0x0", "1e3x512", "1024X1024"]:
    add(f"async size {size!r}", invalid("size", bm(size=size), ASYNC))
# Leading zeros are still ASCII digits: 0512 is 512.
add("bm size with leading zeros is accepted", accepted(size="0512x0512"))

# -- unicode and control characters in every string field --------------------------------------------
for model in [
    "cogview-4\u200b",
    "ｃｏｇｖｉｅｗ-4",
    "cogview-4\n",
    "COGVIEW-4",
    "\u202ecogview-4",
    "cogview‐4",
]:
    add(f"bm model {model!r}", Case(400, "1211", "does not exist", bm(model=model)))
add("bm model with NUL", invalid("model", bm(model="cogview-4\x00")))
add(
    "v1 model zero-width", Case(404, "model_not_found", "does not exist", oa(model="cogview-4\u200b"), OPENAI)
)
add("v1 model with NUL", invalid("model", oa(model="cogview-4\x00"), OPENAI))
add(
    "bm prompt with control chars, bidi and emoji is accepted",
    accepted(prompt="a \x07\x1b[31mred\x1b[0m cat \u202eevil\u202c 😀 \u200b 猫\t\r\n"),
)
add("bm prompt of zero-width spaces is accepted", accepted(prompt="\u200b\u200b"))
add(
    "bm prompt of ideographic and no-break spaces is blank",
    invalid("prompt", bm(prompt="\u3000\u00a0\u2003")),
)
add("bm prompt just a newline escape", invalid("prompt", bm(prompt="\n\r\t")))
add("v1 prompt with NUL", invalid("prompt", oa(prompt="a\x00b"), OPENAI))
add("v1 prompt blank unicode spaces", invalid("prompt", oa(prompt="\u3000"), OPENAI))
add("v1 prompt with control chars is accepted", accepted(OPENAI, prompt="\x1b[2J\x07 猫 😀"))
for quality in ["hd\x00", "ｈｄ", "hd ", "HD\u200b"]:
    add(f"bm quality {quality!r}", invalid("quality", bm(quality=quality)))
add("v1 quality with NUL", invalid("quality", oa(quality="hd\x00"), OPENAI))
add("bm user_id of 6 CJK chars is accepted", accepted(user_id="用户用户用户"))
add("bm user_id with CR/LF is accepted (never echoed)", accepted(user_id="abc\r\nX-Injected: 1"))
add("bm user_id of 128 emoji is accepted", accepted(user_id="😀" * 128))
add("bm user_id of 5 emoji is too short", invalid("user_id", bm(user_id="😀" * 5)))
add("bm user_id of 129 CJK chars is too long", invalid("user_id", bm(user_id="猫" * 129)))
add("bm user_id with NUL", invalid("user_id", bm(user_id="abc\x00def")))
add("bm user_id of 10 KB", invalid("user_id", bm(user_id="u" * 10_000)))
for request_id in ["请求-1", "a\x00b", "a\tb", "a\x7f", "a\x0bb", "ok\u2028line"]:
    add(f"bm request_id {request_id!r}", invalid("request_id", bm(request_id=request_id)))
add("bm request_id of visible ASCII punctuation is accepted", accepted(request_id="<script>'\"%0d%0a;=`"))
add("bm request_id of 128 chars is accepted", accepted(request_id="r" * 128))
for fmt in ["url\x00", "URL", "b64_json ", "ｕｒｌ"]:
    add(f"bm response_format {fmt!r}", invalid("response_format", bm(response_format=fmt)))
add("bm user with NUL", invalid("user", bm(user="a\x00")))
add("bm user of 257 chars", invalid("user", bm(user="u" * 257)))
add("bm user with bidi override is accepted", accepted(user="\u202eresu"))
add("bm style with NUL", invalid("style", bm(style="a\x00")))
add("bm style of 65 chars", invalid("style", bm(style="s" * 65)))
add("bm style with control chars is accepted", accepted(style="\x1b[1m vivid"))
add(
    "bm sensitive_word_check holding NUL and emoji is accepted",
    accepted(sensitive_word_check={"a": "\x00😀"}),
)
add("v1 user with NUL", invalid("user", oa(user="a\x00"), OPENAI))
add("v1 user of 129 chars", invalid("user", oa(user="u" * 129), OPENAI))
add("v1 safety_identifier with NUL", invalid("safety_identifier", oa(safety_identifier="\x00"), OPENAI))
add("v1 user with CR/LF is accepted", accepted(OPENAI, user="u\r\nX-Injected: 1"))
for url in [
    "http://evil\r\nHost: x/",
    "file:///etc/passwd",
    "http://169.254.169.254/latest/meta-data/",
    "h" * 2049,
]:
    add(f"async webhook_url {url[:30]!r}", invalid("webhook_url", bm(webhook_url=url), ASYNC))
add("async response_format b64_json", invalid("response_format", bm(response_format="b64_json"), ASYNC))
add("async user_id with NUL", invalid("user_id", bm(user_id="abc\x00def"), ASYNC))

# -- lone surrogates: a \ud800 escape decodes to something UTF-8 cannot encode (was a 500) -------------
for name in ["model", "prompt", "size", "user_id", "request_id", "user"]:
    body = bm(**{name: "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"abcdef\\ud800")
    add(f"bm lone surrogate in {name}", raw(body, text="surrogate"))
add(
    "bm lone surrogate as a sensitive_word_check key",
    raw(bm(sensitive_word_check={"K": 1}).replace(b'"K"', b'"\\udfff"'), text="surrogate"),
)
add(
    "bm lone surrogate in an ignored field",
    raw(bm(extra="PLACEHOLDER").replace(b"PLACEHOLDER", b"\\udc00"), text="surrogate"),
)
add(
    "bm surrogate pair escape is an emoji, accepted",
    Case(
        400,
        "1214",
        "invalid watermark_enabled",
        bm(prompt="P", **SENTINEL).replace(b'"P"', b'"\\ud83d\\ude00"'),
    ),
)
add(
    "v1 lone surrogate in prompt",
    raw(oa(prompt="P").replace(b'"P"', b'"\\ud800"'), path=OPENAI, text="surrogate"),
)
add(
    "async lone surrogate in model",
    raw(bm(model="M").replace(b'"M"', b'"\\ud800"'), path=ASYNC, text="surrogate"),
)

# -- numbers: huge, non-finite, NaN ------------------------------------------------------------------
OK_PREFIX = dumps(OK)[:-1]  # '{"model": ..., "size": "512x512"' without the closing brace
add(
    "bm seed of 4301 digits (was a 500)",
    raw(OK_PREFIX + b', "seed": ' + b"9" * 4301 + b"}", text="4300 digits"),
)
add("bm seed of 4300 digits", invalid("seed", OK_PREFIX + b', "seed": ' + b"9" * 4300 + b"}"))
add("bm seed of -4301 digits", raw(OK_PREFIX + b', "seed": -' + b"9" * 4301 + b"}", text="4300 digits"))
add("bm huge int in an ignored field", raw(OK_PREFIX + b', "x": ' + b"1" * 5000 + b"}", text="4300 digits"))
add("bm seed 2^64", invalid("seed", bm(seed=2**64)))
add("bm seed -2^63", invalid("seed", bm(seed=-(2**63))))
add("bm seed 1e2", invalid("seed", OK_PREFIX + b', "seed": 1e2}'))
add("bm seed 1e400 (infinite float)", raw(OK_PREFIX + b', "seed": 1e400}', text="out of range"))
add("bm seed -0 is zero, accepted", accepted(seed=0))
for literal in [b"NaN", b"Infinity", b"-Infinity"]:
    add(
        f"bm seed {literal.decode()}",
        raw(OK_PREFIX + b', "seed": ' + literal + b"}", text="not a JSON number"),
    )
add(
    "bm NaN inside sensitive_word_check (was stored)",
    raw(OK_PREFIX + b', "sensitive_word_check": {"a": NaN}}', text="not a JSON number"),
)
add("v1 seed NaN", raw(dumps(OK_OPENAI)[:-1] + b', "seed": NaN}', path=OPENAI, text="not a JSON number"))
add("v1 n of 5000 digits", raw(dumps(OK_OPENAI)[:-1] + b', "n": ' + b"7" * 5000 + b"}", path=OPENAI))
add("v1 n 1e400", raw(dumps(OK_OPENAI)[:-1] + b', "n": 1e400}', path=OPENAI, text="out of range"))

# -- size of the body and of strings ---------------------------------------------------------------
add("bm 1 MB prompt under the body limit", Case(400, "1261", "4000", bm(prompt="a" * 1_000_000)))
add("bm 1 MB prompt of CJK over the body limit", Case(413, "1210", "exceeds", bm(prompt="猫" * 400_000)))
add("v1 1 MB prompt", Case(400, "string_above_max_length", "4000", oa(prompt="a" * 1_000_000), OPENAI))
add("v1 body over 1 MiB", Case(413, "request_too_large", "exceeds", oa(prompt="a" * (1 << 20)), OPENAI))
add("async body over 1 MiB", Case(413, "1210", "exceeds", bm(prompt="a" * (1 << 20)), ASYNC))
add("bm 900 KB ignored field is accepted", accepted(padding="p" * 900_000))
add("bm 30000 unknown keys are accepted", accepted(**{f"k{i}": i for i in range(30_000)}))
add("bm prompt of 4000 emoji (4000 chars, 16 KB) is within the limit", accepted(prompt="😀" * 4000))
add("bm prompt of 4001 emoji", Case(400, "1261", "4000", bm(prompt="😀" * 4001)))

# -- nesting: bounded at 32 levels, and 100k levels neither crash nor hang ---------------------------
add("bm 100k nested arrays", raw(b"[" * 100_000 + b"]" * 100_000, text="nests deeper"))
add("bm 100k nested objects", raw(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, text="nests deeper"))
add("bm 100k unclosed arrays", raw(b"[" * 100_000, text="nests deeper"))
add("bm sensitive_word_check 31 levels is accepted", accepted(sensitive_word_check=nested(30)))
add("bm sensitive_word_check 33 levels", raw(bm(sensitive_word_check=nested(32)), text="nests deeper"))
add("bm 900 levels in an ignored field (was accepted)", raw(bm(x=nested(900)), text="nests deeper"))
add("bm 33 levels of arrays in an ignored field", raw(bm(x=nested_list(32)), text="nests deeper"))
add("bm 31 levels of arrays in an ignored field are accepted", accepted(x=nested_list(30)))
add("v1 100k nested arrays", raw(b"[" * 100_000 + b"]" * 100_000, path=OPENAI, text="nests deeper"))
add("async 100k nested objects", raw(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, path=ASYNC, text="nests"))

# -- duplicate keys: the last one wins -----------------------------------------------------------------
add("bm duplicate n, last (2) wins", invalid("n", OK_PREFIX + b', "n": 1, "n": 2}'))
add(
    "bm duplicate n, last (1) wins",
    Case(
        400, "1214", "invalid watermark_enabled", OK_PREFIX + b', "n": 2, "n": 1, "watermark_enabled": "s"}'
    ),
)
add(
    "bm duplicate model, last (unknown) wins",
    Case(400, "1211", "bogus", b'{"model": "cogview-4", "prompt": "x", "model": "bogus"}'),
)
add(
    "bm duplicate prompt, last (null) wins",
    Case(400, "1213", "prompt", b'{"model": "cogview-4", "prompt": "x", "prompt": null}'),
)
add("bm duplicate size, last (bad) wins", invalid("size", OK_PREFIX + b', "size": "0x0"}'))
add("bm keys are case-sensitive", Case(400, "1213", "model", b'{"Model": "cogview-4", "prompt": "x"}'))
add("v1 duplicate n, last (9) wins", invalid("n", b'{"prompt": "x", "n": 1, "n": 9}', OPENAI))

# -- bodies that are not one JSON object in UTF-8 -------------------------------------------------------
NOT_OBJECTS = {
    "number": b"42",
    "true": b"true",
    "null": b"null",
    "empty array": b"[]",
    "empty string": b'""',
    "JSON in a JSON string": json.dumps(json.dumps(OK)).encode(),
    "whitespace only": b" \n\t\r ",
    "NUL bytes only": b"\x00" * 64,
    "two objects": dumps(OK) + dumps(OK),
    "trailing garbage": dumps(OK) + b" x",
    "trailing comma": b'{"model": "cogview-4", "prompt": "x",}',
    "single quotes": b"{'model': 'cogview-4', 'prompt': 'x'}",
    "comment": b'{"model": "cogview-4", /* c */ "prompt": "x"}',
    "raw control char in a string": b'{"model": "cogview-4", "prompt": "a\x01b"}',
    "raw NUL between members": b'{"model": "cogview-4",\x00 "prompt": "x"}',
    "raw newline in a string": b'{"model": "cogview-4", "prompt": "a\nb"}',
    "bad escape": b'{"model": "cogview-4", "prompt": "\\x41"}',
    "truncated \\u escape": b'{"model": "cogview-4", "prompt": "\\u12"}',
    "latin-1 byte": b'{"model": "cogview-4", "prompt": "caf\xe9"}',
    "overlong UTF-8 slash": b'{"model": "cogview-4", "prompt": "\xc0\xaf"}',
    "CESU-8 surrogate": b'{"model": "cogview-4", "prompt": "\xed\xa0\x80"}',
    "truncated UTF-8": b'{"model": "cogview-4", "prompt": "\xe7\x8c"}',
    "UTF-8 BOM": b"\xef\xbb\xbf" + dumps(OK),
    "UTF-16 LE with BOM": json.dumps(OK).encode("utf-16"),
    "UTF-16 BE with BOM": b"\xfe\xff" + json.dumps(OK).encode("utf-16-be"),
    "UTF-16 LE without BOM": json.dumps(OK).encode("utf-16-le"),
    "UTF-32 with BOM": json.dumps(OK).encode("utf-32"),
}
for name, body in NOT_OBJECTS.items():
    add(f"bm body {name}", raw(body))
for name in ["number", "null", "empty array", "UTF-8 BOM", "UTF-16 LE with BOM", "latin-1 byte"]:
    add(f"v1 body {name}", raw(NOT_OBJECTS[name], path=OPENAI))
    add(f"async body {name}", raw(NOT_OBJECTS[name], path=ASYNC))
add("bm empty object", Case(400, "1213", "model", b"{}"))
add("v1 empty object", Case(400, "missing_required_parameter", "prompt", b"{}", OPENAI))
add("v1 empty body", raw(b"", path=OPENAI, text="empty"))
add("async empty body", raw(b"", path=ASYNC, text="empty"))


def with_headers(case: Case, *headers: tuple[str, str | bytes]) -> Case:
    return Case(case.status, case.code, case.text, case.body, case.path, case.method, headers)


# -- content types: application/json or application/*+json, parameters ignored; only UTF-8 ------------
REFUSED_TYPES = {
    "text/plain": "text/plain",
    "form": "application/x-www-form-urlencoded",
    "multipart": "multipart/form-data; boundary=XyZ",
    "bare json": "json",
    "application/jsonp": "application/jsonp",
    "application/x-json": "application/x-json",
    "application/json-seq": "application/json-seq",
    "*/*": "*/*",
    "text/json": "text/json",
    "empty": "",
}
for name, content_type in REFUSED_TYPES.items():
    add(
        f"bm content type {name}",
        with_headers(raw(bm(), text="Content-Type"), ("content-type", content_type)),
    )
for path in (OPENAI, ASYNC):
    route = "v1" if path == OPENAI else "async"
    body = oa() if path == OPENAI else bm()
    add(f"{route} no content type", with_headers(raw(body, path=path, text="Content-Type")))
    add(f"{route} text/plain", with_headers(raw(body, path=path), ("content-type", "text/plain")))
    multipart = b'--XyZ\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--XyZ--\r\n'
    add(
        f"{route} multipart form",
        with_headers(raw(multipart, path=path), ("content-type", "multipart/form-data; boundary=XyZ")),
    )
    add(
        f"{route} form-encoded",
        with_headers(raw(b"prompt=x", path=path), ("content-type", "application/x-www-form-urlencoded")),
    )
for content_type in [
    "APPLICATION/JSON; charset=UTF-8",
    "application/ld+json",
    "application/json; charset=utf-16",
]:
    add(
        f"bm content type {content_type!r} is accepted",
        with_headers(accepted(), ("content-type", content_type)),
    )
add(
    "bm charset=utf-16 does not make a UTF-16 body readable",
    with_headers(raw(json.dumps(OK).encode("utf-16")), ("content-type", "application/json; charset=utf-16")),
)
add(
    "bm two content types: the first (text/plain) counts",
    with_headers(
        raw(bm(), text="Content-Type"), ("content-type", "text/plain"), ("content-type", "application/json")
    ),
)
add(
    "bm two content types: the first (json) counts",
    with_headers(accepted(), ("content-type", "application/json"), ("content-type", "text/plain")),
)

# -- content codings: refused unread (415), never inflated ----------------------------------------------
for coding in ["gzip", "deflate", "br", "zstd", "gzip, identity", "x-gzip", "compress"]:
    add(
        f"bm Content-Encoding {coding}",
        with_headers(
            Case(415, "1210", "Content-Encoding", gzip.compress(bm())), *JSON_CT, ("content-encoding", coding)
        ),
    )
add(
    "bm gzip bomb (64 MiB of zeros)",
    with_headers(Case(415, "1210", "uncompressed", BOMB), *JSON_CT, ("content-encoding", "gzip")),
)
add(
    "v1 gzip body",
    with_headers(
        Case(415, None, "Content-Encoding", gzip.compress(oa()), OPENAI),
        *JSON_CT,
        ("content-encoding", "gzip"),
    ),
)
add(
    "async gzip bomb",
    with_headers(Case(415, "1210", "Content-Encoding", BOMB, ASYNC), *JSON_CT, ("content-encoding", "gzip")),
)
for coding in ["identity", "IDENTITY", ""]:
    add(
        f"bm Content-Encoding {coding!r} is accepted",
        with_headers(accepted(), *JSON_CT, ("content-encoding", coding)),
    )

# -- methods: 405 with Allow, in each route's envelope --------------------------------------------------
METHOD_CASES = [
    (IMAGES, ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]),
    (ASYNC, ["GET", "PUT", "DELETE", "PATCH"]),
    (OPENAI, ["GET", "PUT", "DELETE", "PATCH"]),
    (f"/files/{UNKNOWN_IMAGE}.png", ["POST", "PUT", "DELETE"]),
    ("/healthz", ["POST", "DELETE"]),
    ("/readyz", ["PUT"]),
    ("/metrics", ["POST"]),
    (f"{RESULT}/{UNKNOWN_JOB}", ["POST", "DELETE"]),
    (f"{ASYNC}/{UNKNOWN_JOB}/cancel", ["GET", "DELETE"]),
    ("/v1/models", ["POST", "DELETE"]),
    ("/v1/models/cogview-4", ["PUT"]),
]
for path, methods in METHOD_CASES:
    for method in methods:
        code = None if path.startswith("/v1") else "1222"
        add(f"{method} {path}", Case(405, code, "not allowed", bm(), path, method))

# -- ids in paths: traversal, encodings, NUL, unicode, length ------------------------------------------
NO_IMAGE = {
    "no .png": f"/files/{UNKNOWN_IMAGE}",
    "only .png": "/files/.png",
    "upper-case .PNG": f"/files/{UNKNOWN_IMAGE}.PNG",
    "double .png": f"/files/{UNKNOWN_IMAGE}.png.png",
    "unknown id": f"/files/{UNKNOWN_IMAGE}.png",
    "NUL": "/files/%00.png",
    "NUL after the id": f"/files/{UNKNOWN_IMAGE}%00.png",
    "%2e%2e%2f": "/files/%2e%2e%2f%2e%2e%2fcogserve.db",
    "..%2f": "/files/..%2f..%2fcogserve.db.png",
    "..%5c": "/files/..%5c..%5ccogserve.db.png",
    "%252e%252e": "/files/%252e%252e%252fcogserve.db.png",
    "dot": "/files/..png",
    "unicode": "/files/猫.png",
    "percent-encoded unicode": "/files/%E7%8C%AB.png",
    "invalid UTF-8 percent-encoding": "/files/%ff%fe.png",
    "8000-char id": "/files/" + "a" * 8000 + ".png",
    "query with traversal": f"/files/{UNKNOWN_IMAGE}.png?path=../../cogserve.db",
}
for name, path in NO_IMAGE.items():
    add(f"GET /files {name}", Case(404, "1222", "", None, path, "GET", ()))
NO_JOB = {
    "NUL": "%00",
    "%2e%2e": "%2e%2e",
    "..%2f": "..%2f..%2ffiles",
    "unicode": "猫",
    "invalid UTF-8": "%ff",
    "wrong alphabet": "job-" + "G" * 32,
    "unknown id": UNKNOWN_JOB,
    "8000 chars": "j" * 8000,
    "SQL": "job-'%20OR%20'1'='1",
}
for name, job_id in NO_JOB.items():
    add(f"GET async-result {name}", Case(404, "1222", "", None, f"{RESULT}/{job_id}", "GET", ()))
for name in ["NUL", "SQL", "unknown id"]:
    add(f"POST cancel {name}", Case(404, "1222", "", None, f"{ASYNC}/{NO_JOB[name]}/cancel", "POST", ()))
add("GET /v1/models unicode", Case(404, "model_not_found", "猫", None, "/v1/models/%E7%8C%AB", "GET", ()))
add("GET /v1/models NUL", Case(404, "model_not_found", "does not exist", None, "/v1/models/%00", "GET", ()))
add(
    "GET unknown API with traversal",
    Case(404, "1222", "no such API", None, "/api/paas/v4/%2e%2e/%2e%2e/etc/passwd", "GET", ()),
)
add(
    "GET /files request target over 8 KiB",
    Case(414, "1210", "8192", None, "/files/" + "a" * 9000 + ".png", "GET", ()),
)
add(
    "GET async-result target over 8 KiB",
    Case(414, "1210", "8192", None, f"{RESULT}/" + "j" * 9000, "GET", ()),
)
add("GET /v1 query over 8 KiB", Case(414, None, "8192", None, "/v1/models?x=" + "q" * 9000, "GET", ()))

# -- headers: size limit (431), hostile values --------------------------------------------------------
add(
    "GET /healthz with a 64 KB header",
    Case(431, "1210", "16384", None, "/healthz", "GET", (("x-big", "a" * 65536),)),
)
add(
    "POST images with 2000 small headers",
    Case(
        431,
        "1210",
        "headers total",
        bm(),
        IMAGES,
        "POST",
        (*JSON_CT, *((f"x-h{i}", "v") for i in range(2000))),
    ),
)
add(
    "GET /v1/models with a 64 KB header",
    Case(431, None, "16384", None, "/v1/models", "GET", (("x-big", "a" * 65536),)),
)
add(
    "POST images with a 20 KB Authorization header",
    Case(
        431,
        "1210",
        "headers total",
        bm(),
        IMAGES,
        "POST",
        (*JSON_CT, ("authorization", "Bearer " + "k" * 20_000)),
    ),
)
add(
    "Authorization with non-ASCII bytes is ignored when auth is off",
    with_headers(accepted(), *JSON_CT, ("authorization", b"Bearer \xff\xfe\x80")),
)
add(
    "a 15 KB header is under the limit",
    with_headers(accepted(), *JSON_CT, ("x-padding", "p" * 15_000)),
)


# -- moderation evasion: accents, fillers, look-alikes, strays between CJK characters, "@" -------------
EVASIONS = [
    "how to make a pipe bo\u0301mb",
    "how to make a pipe bómb",
    "pipe bo\u3164mb",
    "pipe b\u043emb",  # Cyrillic о
    "pipe b\u03bfmb",  # Greek omicron
    "pipe b@mb",
    "儿童x色情",
    "儿童1色情",
    "儿童ｰ色情",
]
for prompt in EVASIONS:
    add(f"moderation evasion {prompt!a}", Case(400, "1301", body=bm(prompt=prompt)))
    add(
        f"v1 moderation evasion {prompt!a}",
        Case(400, "content_policy_violation", body=oa(prompt=prompt), path=OPENAI),
    )

# -- the in-process app ---------------------------------------------------------------------------------


def _settings(data_dir: Path, models_dir: Path, **areas: dict[str, Any]) -> Settings:
    values: dict[str, dict[str, Any]] = {
        "storage": {"data_dir": data_dir},
        "model": {"builtin_dir": models_dir, "builtin": "tiny-random", "warmup": False, **TEST_STEPS},
    }
    for area, overrides in areas.items():
        values[area] = {**values.get(area, {}), **overrides}
    # Settings also read COGSERVE_* variables: a developer's must not leak into the catalogue.
    with pytest.MonkeyPatch.context() as env:
        for key in list(os.environ):
            if key.startswith("COGSERVE_"):
                env.delenv(key)
        return Settings(**values)


@pytest.fixture(scope="module")
def app_client(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, shared_engine: Engine
) -> Iterator[TestClient]:
    """One app for the whole catalogue (a fresh one per case would cost more than the cases)."""
    settings = _settings(tmp_path_factory.mktemp("hostile") / "data", models_dir)
    app = create_app(settings, engine=shared_engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(app)
        yield client


def check_error(response: httpx.Response, path: str, status: int, code: str | None, text: str) -> None:
    """The status, the envelope of the route's API, the code, and no internals leaked."""
    assert response.status_code == status, response.text[:500]
    assert "x-request-id" in response.headers
    assert response.headers.get("x-should-retry") == "false"
    assert "Traceback" not in response.text
    if status == 405:
        assert response.headers.get("allow")
    envelope = response.json()
    assert set(envelope) == {"error"}
    error = envelope["error"]
    if path.startswith("/v1"):
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    else:
        assert set(error) == {"code", "message"}
    assert error["code"] == code, error
    assert text in error["message"], error


@pytest.mark.parametrize("case", CASES)
def test_hostile_request(app_client: TestClient, case: Case) -> None:
    started = time.monotonic()
    response = app_client.request(case.method, case.path, content=case.body, headers=list(case.headers))
    assert time.monotonic() - started < 10, "a hostile request must not hang the server"
    check_error(response, case.path, case.status, case.code, case.text)
    assert app_client.get("/healthz").status_code == 200


def test_head_on_a_get_route_is_405_with_allow(app_client: TestClient) -> None:
    # HEAD has no body to carry an envelope; the status and Allow still say what to do.
    response = app_client.head("/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


def test_client_x_request_id_is_not_echoed(app_client: TestClient) -> None:
    response = app_client.get("/healthz", headers={"x-request-id": "evil\u2028id".encode()})
    assert response.headers["x-request-id"].startswith("req-")


# -- auth on: hostile Authorization headers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_client(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, shared_engine: Engine
) -> Iterator[TestClient]:
    settings = _settings(
        tmp_path_factory.mktemp("hostile-auth") / "data", models_dir, auth={"require_auth": True}
    )
    app = create_app(settings, engine=shared_engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(app)
        yield client


def _jwt(header: dict[str, Any], payload: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}."


AUTH_CASES: list[Any] = [
    pytest.param(None, "1001", id="no Authorization"),
    pytest.param("", "1001", id="empty Authorization"),
    pytest.param("Bearer ", "1002", id="Bearer and nothing"),
    pytest.param("Bearer " + "k" * 8000, "1002", id="8 KB token"),
    pytest.param(b"Bearer \xff\xfe\x80", "1002", id="non-ASCII bytes"),
    pytest.param("Basic dXNlcjpwYXNz", "1002", id="Basic scheme"),
    pytest.param("Bearer a.b.c", "1002", id="JWT-shaped garbage"),
    pytest.param("Bearer " + _jwt({"alg": "none"}, {"api_key": "x", "exp": 1}), "1002", id="alg none JWT"),
    pytest.param(
        "Bearer " + _jwt({"alg": "HS256"}, {"api_key": "x", "exp": float("nan")}), "1002", id="NaN exp JWT"
    ),
    pytest.param(
        "Bearer " + _jwt({"alg": "HS256"}, {"api_key": "x", "exp": 10**400}), "1002", id="401-digit exp JWT"
    ),
    pytest.param("Bearer ../../etc/passwd", "1002", id="traversal as a key"),
    pytest.param("Bearer key'; DROP TABLE api_keys;--.secret", "1002", id="SQL as a key"),
    pytest.param("Bearer \u732b.secret".encode(), "1002", id="UTF-8 key id"),
]


@pytest.mark.parametrize(("authorization", "code"), AUTH_CASES)
def test_hostile_authorization(auth_client: TestClient, authorization: str | bytes | None, code: str) -> None:
    headers: list[tuple[str, str | bytes]] = [*JSON_CT]
    if authorization is not None:
        headers.append(("authorization", authorization))
    for path, expected in ((IMAGES, code), (OPENAI, "invalid_api_key")):
        response = auth_client.post(path, content=bm(), headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == expected
        assert "Traceback" not in response.text
    assert auth_client.get("/healthz").status_code == 200


# -- after the catalogue: legal-but-strange values really generate, and a normal request still does --


def test_strange_but_legal_values_generate(app_client: TestClient) -> None:
    request_id = "<'\"%0d%0a;=`>"
    body = bm(
        prompt="a \x07\x1b[31mred\x1b[0m cat \u202eevil\u202c 😀 \u200b 猫\t\r\n",
        user_id="用户\r\nX-Injected: 1",
        user="\u202eresu",
        style="\x1b[1m",
        request_id=request_id,
        sensitive_word_check={"type": "ALL", "note": "\x00😀"},
        size="0512x0512",
    )
    # A duplicate key (last wins) on top: the first model would be refused.
    body = body.replace(b'{"model": "cogview-4"', b'{"model": "bogus", "model": "cogview-4"', 1)
    response = app_client.post(IMAGES, content=body, headers=list(JSON_CT))
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    assert "x-injected" not in response.headers
    url = response.json()["data"][0]["url"]
    assert app_client.get(url).headers["content-type"] == "image/png"

    openai = app_client.post(
        OPENAI, content=oa(prompt="\x1b[2J 猫 😀", user="u\r\nX-Injected: 1"), headers=list(JSON_CT)
    )
    assert openai.status_code == 200, openai.text
    assert "x-injected" not in openai.headers


def test_after_the_catalogue_the_app_is_healthy_and_generates(app_client: TestClient) -> None:
    assert app_client.get("/healthz").status_code == 200
    assert app_client.get("/readyz").status_code == 200
    response = app_client.post(IMAGES, json=OK)
    assert response.status_code == 200, response.text
    assert app_client.get(response.json()["data"][0]["url"]).status_code == 200
    # Nothing in the catalogue was answered with a 5xx.
    metrics = app_client.get("/metrics").text
    assert not [line for line in metrics.splitlines() if 'status="5' in line], metrics


def test_catalogue_size() -> None:
    assert len(CASES) + len(AUTH_CASES) + len(LIVE_CASES) >= 150


# -- over real sockets: one live server -------------------------------------------------------------------
# All slow: the server's start-up, and the 2 s body and header deadlines that many of these wait out.


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("hostile-live") / "data",
        models_dir,
        env={
            "COGSERVE_SERVER__BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "COGSERVE_SERVER__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "COGSERVE_MODEL__WARMUP": "false",
        },
    )
    yield server
    stop_server(server.process)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after it
    elapsed: float
    rest: bytes  # bytes after the first response


def exchange(
    server: Server, data: bytes, *, then: bytes = b"", pause: float = 0.0, timeout: float = 10.0
) -> Answer:
    """Send ``data`` (then, after ``pause`` seconds, ``then``) on a fresh connection; read the first
    response and whatever follows it until the server closes or ``timeout`` passes."""
    host, port = server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if then:
                time.sleep(pause)
                sock.sendall(then)
        except OSError:
            pass  # the server may answer and close before taking everything
        received, closed = b"", False
        deadline = started + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    elapsed = time.monotonic() - started
    head, _, rest = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return Answer(status, headers, rest[:length], closed, elapsed, rest[length:])


HOST = b"Host: 127.0.0.1\r\n"
CLOSE = b"Connection: close\r\n"
POST_IMAGES = b"POST " + IMAGES.encode() + b" HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
VALID = dumps({**OK, **SENTINEL})  # answered 400 naming watermark_enabled: the body was read whole


def get(target: bytes, *headers: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"".join(headers) + CLOSE + b"\r\n"


def post(body: bytes, *headers: bytes, length: int | None = None, path: bytes = IMAGES.encode()) -> bytes:
    head = (
        b"POST " + path + b" HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n" + b"".join(headers)
    )
    if length is not None:
        head += b"Content-Length: %d\r\n" % length
    return head + CLOSE + b"\r\n" + body


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = (body[i : i + size] for i in range(0, len(body), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


PLAIN = "plain"  # uvicorn's own "400 Invalid HTTP request received.", text/plain: the parser refused it
NULL = "null"  # an error whose envelope's code is null (OpenAI's, for a body it cannot read)
GZ = gzip.compress(VALID)
BIG = dumps({"prompt": "a" * (2 << 20)})
LIVE_CASES: list[Any] = [
    # (raw request, status, business code / PLAIN / NULL, or None for a success)
    pytest.param(get(b"/healthz", b"X-Big: " + b"a" * 65536 + b"\r\n"), 431, "1210", id="64 KB header"),
    pytest.param(get(b"/healthz", b"X-Big: " + b"a" * (1 << 20) + b"\r\n"), 431, "1210", id="1 MB header"),
    pytest.param(
        get(b"/healthz", *(b"X-%d: a\r\n" % i for i in range(3000))), 431, "1210", id="3000 headers"
    ),
    pytest.param(
        get(b"/healthz", b"X-Pad: " + b"p" * 15_000 + b"\r\n"), 200, None, id="15 KB header is fine"
    ),
    pytest.param(get(b"/files/" + b"a" * 9000 + b".png"), 414, "1210", id="9 KB request target"),
    pytest.param(get(b"/files/" + b"a" * 70_000 + b".png"), 400, PLAIN, id="70 KB request target"),
    pytest.param(get(b"/healthz", b"X-A: a\rb\r\n"), 400, PLAIN, id="bare CR in a header"),
    pytest.param(get(b"/healthz", b"X-A: a\x00b\r\n"), 400, PLAIN, id="NUL in a header"),
    pytest.param(get(b"/healthz", b"X-A: a\r\n b\r\n"), 400, PLAIN, id="obsolete header folding"),
    pytest.param(get(b"/healthz", b"X A: b\r\n"), 400, PLAIN, id="space in a header name"),
    pytest.param(get(b"/healthz\r\nX-Injected: 1"), 200, None, id="CRLF in the request line is a header"),
    pytest.param(get(b"/files/\xe7\x8c\xab.png"), 400, PLAIN, id="raw UTF-8 in the path"),
    pytest.param(b"FOO /healthz HTTP/1.1\r\n" + HOST + CLOSE + b"\r\n", 400, PLAIN, id="unknown method"),
    pytest.param(b"GET /healthz HTTP/9.9\r\n" + HOST + CLOSE + b"\r\n", 400, PLAIN, id="HTTP/9.9"),
    pytest.param(b"GET /healthz HTTP/1.0\r\n\r\n", 200, None, id="HTTP/1.0 without Host"),
    pytest.param(get(b"/healthz?x=%0d%0aSet-Cookie:%20a=b"), 200, None, id="CRLF in the query is inert"),
    pytest.param(get(b"/files/../../etc/passwd"), 404, "1222", id="literal ../ in /files"),
    pytest.param(get(b"/files/../cogserve.db"), 404, "1222", id="literal ../ to the database"),
    pytest.param(get(b"/files/..%2f..%2fcogserve.db.png"), 404, "1222", id="..%2f in /files"),
    pytest.param(get(b"/files/%2e%2e/%2e%2e/etc/passwd"), 404, "1222", id="%2e%2e in /files"),
    pytest.param(get(b"/files/%00.png"), 404, "1222", id="%00 in /files"),
    pytest.param(get(b"/files/..\\..\\cogserve.db.png"), 404, "1222", id="backslashes in /files"),
    pytest.param(get(RESULT.encode() + b"/../../../files/x.png"), 404, "1222", id="../ in async-result"),
    pytest.param(get(RESULT.encode() + b"/%2e%2e%2f%2e%2e"), 404, "1222", id="%2e%2e%2f in async-result"),
    pytest.param(get(RESULT.encode() + b"/%00"), 404, "1222", id="%00 in async-result"),
    pytest.param(post(VALID, b"Content-Length: abc\r\n"), 400, PLAIN, id="Content-Length not a number"),
    pytest.param(post(VALID, b"Content-Length: -1\r\n"), 400, PLAIN, id="negative Content-Length"),
    pytest.param(
        post(VALID, b"Content-Length: 5\r\n", length=len(VALID)), 400, PLAIN, id="two Content-Lengths"
    ),
    pytest.param(
        post(chunked(VALID), b"Transfer-Encoding: chunked\r\n", length=5),
        400,
        PLAIN,
        id="chunked and Content-Length",
    ),
    pytest.param(post(b"", length=10**12), 413, "1210", id="Content-Length of 1 TB, no body sent"),
    pytest.param(
        post(b"", b"Expect: 100-continue\r\n", length=2 << 20),
        413,
        "1210",
        id="Expect 100-continue, 2 MiB declared",
    ),
    pytest.param(
        post(chunked(BIG), b"Transfer-Encoding: chunked\r\n"), 413, "1210", id="chunked body over 1 MiB"
    ),
    pytest.param(
        post(chunked(VALID), b"Transfer-Encoding: chunked\r\n"), 400, "1214", id="chunked body is read"
    ),
    pytest.param(post(GZ, b"Content-Encoding: gzip\r\n", length=len(GZ)), 415, "1210", id="gzip body"),
    pytest.param(post(BOMB, b"Content-Encoding: gzip\r\n", length=len(BOMB)), 415, "1210", id="gzip bomb"),
    pytest.param(
        post(chunked(GZ), b"Transfer-Encoding: gzip, chunked\r\n"),
        400,
        "1210",
        id="gzip transfer coding is not inflated",
    ),
    pytest.param(
        post(GZ, b"Content-Encoding: gzip\r\n", length=len(GZ), path=OPENAI.encode()),
        415,
        NULL,
        id="v1 gzip body",
    ),
    pytest.param(
        b"PUT " + IMAGES.encode() + b" HTTP/1.1\r\n" + HOST + CLOSE + b"Content-Length: 0\r\n\r\n",
        405,
        "1222",
        id="PUT over the wire",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("request_bytes", "status", "code"), LIVE_CASES)
def test_live_hostile_request(live: Server, request_bytes: bytes, status: int, code: str | None) -> None:
    answer = exchange(live, request_bytes)
    assert answer.status == status, answer
    if code == PLAIN:
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.closed
    elif code is not None:
        assert json.loads(answer.body)["error"]["code"] == (None if code == NULL else code)
        assert "x-request-id" in answer.headers
    if status in (408, 413, 414, 415, 431):
        assert answer.headers.get("connection") == "close"
    assert b"100 Continue" not in answer.body + answer.rest
    assert "x-injected" not in answer.headers and "set-cookie" not in answer.headers
    assert httpx.get(f"{live.url}/healthz", timeout=5).status_code == 200


@pytest.mark.slow
def test_a_stalled_body_is_cut_off_with_408(live: Server) -> None:
    """uvicorn has no body timeout: cogserve's middleware gives the body body_timeout_s to arrive."""
    head = POST_IMAGES + b"Content-Length: %d\r\n\r\n" % len(VALID)
    answer = exchange(live, head + VALID[:20], timeout=BODY_TIMEOUT_S + 8)
    assert answer.status == 408, answer
    assert json.loads(answer.body)["error"]["code"] == "1210"
    assert answer.closed
    assert BODY_TIMEOUT_S - 0.1 <= answer.elapsed < BODY_TIMEOUT_S + 3


@pytest.mark.slow
def test_a_content_length_longer_than_the_body_is_cut_off_with_408(live: Server) -> None:
    head = POST_IMAGES + b"Content-Length: %d\r\n\r\n" % (len(VALID) + 100)
    answer = exchange(live, head + VALID, timeout=BODY_TIMEOUT_S + 8)
    assert answer.status == 408, answer
    assert answer.closed and answer.elapsed < BODY_TIMEOUT_S + 3


def trickle(server: Server, first: bytes, pieces: list[bytes], every_s: float) -> tuple[bytes, float]:
    """Send ``first``, then one piece every ``every_s`` until the server answers or closes (at most
    10 s); return what it sent back and the seconds taken."""
    host, port = server.url.removeprefix("http://").split(":")
    started, answer = time.monotonic(), b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(first)
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:
                break
            sock.settimeout(every_s)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer.startswith(b"HTTP/") or time.monotonic() - started > 10:
                break
    return answer, time.monotonic() - started


@pytest.mark.slow
def test_a_trickled_body_is_cut_off_at_the_deadline(live: Server) -> None:
    """Slow-loris on the body: bytes keep coming, but the whole body must be there by the deadline."""
    head = POST_IMAGES + b"Content-Length: %d\r\n\r\n" % (len(VALID) + 1000)
    answer, elapsed = trickle(live, head, [bytes([byte]) for byte in VALID], every_s=0.25)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert elapsed < BODY_TIMEOUT_S + 3


def _assert_head_timed_out(answer: Answer) -> None:
    assert answer.status == 408, answer
    assert json.loads(answer.body)["error"] == {
        "code": "1210",
        "message": f"the request headers did not arrive within {HEADER_TIMEOUT_S:g} s",
    }
    assert answer.closed and HEADER_TIMEOUT_S - 0.1 <= answer.elapsed < HEADER_TIMEOUT_S + 3


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed_with_408(live: Server) -> None:
    """uvicorn has no header timeout: cogserve's protocol gives the head header_timeout_s."""
    _assert_head_timed_out(exchange(live, b"", timeout=HEADER_TIMEOUT_S + 8))


@pytest.mark.slow
def test_a_head_that_never_ends_is_cut_off_with_408(live: Server) -> None:
    _assert_head_timed_out(exchange(live, b"GET /healthz HTTP/1.1\r\n" + HOST, timeout=HEADER_TIMEOUT_S + 8))


@pytest.mark.slow
def test_a_trickled_head_is_cut_off_at_the_deadline(live: Server) -> None:
    """Slow-loris on the headers: a header line every 0.2 s, forever."""
    lines = [b"X-Slow-%d: 1\r\n" % n for n in range(100)]
    answer, elapsed = trickle(live, b"GET /healthz HTTP/1.1\r\n" + HOST, lines, every_s=0.2)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert elapsed < HEADER_TIMEOUT_S + 3


@pytest.mark.slow
def test_a_stalled_head_on_a_kept_alive_connection_is_cut_off_too(live: Server) -> None:
    first = b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n"
    answer = exchange(live, first + b"GET /healthz HTTP/1.1\r\n", timeout=HEADER_TIMEOUT_S + 8)
    assert answer.status == 200  # the first request is served at once
    assert answer.rest.startswith(b"HTTP/1.1 408") and answer.closed
    assert HEADER_TIMEOUT_S - 0.1 <= answer.elapsed < HEADER_TIMEOUT_S + 3


@pytest.mark.slow
def test_a_slow_head_within_the_deadline_is_served(live: Server) -> None:
    answer = exchange(live, b"GET /healthz HTTP/1.1\r\n", then=HOST + CLOSE + b"\r\n", pause=1.0)
    assert answer.status == 200 and answer.elapsed >= 1.0


@pytest.mark.slow
def test_an_idle_kept_alive_connection_outlives_the_clients_own_expiry(live: Server) -> None:
    """httpx (so zhipuai and openai) drops idle connections after 5 s. Were the server to close at
    the same moment (uvicorn's default is also 5 s), a POST sent on the closing connection would
    fail with no answer and no retry: the load test saw one in 7,495. The server waits longer."""
    host, port = live.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/healthz")
        first = connection.getresponse()
        assert first.status == 200 and first.read()
        kept = connection.sock
        time.sleep(5.5)
        connection.request("GET", "/healthz")  # raises RemoteDisconnected had the server closed
        second = connection.getresponse()
        assert second.status == 200 and second.read() and connection.sock is kept
    finally:
        connection.close()


@pytest.mark.slow
def test_a_content_length_shorter_than_the_body(live: Server) -> None:
    """The body is cut at Content-Length; the rest is parsed as the next request, which uvicorn
    refuses (400 text/plain) and closes. Nothing reaches a route as a smuggled request."""
    answer = exchange(live, POST_IMAGES + b"Content-Length: 10\r\n\r\n" + VALID)
    assert answer.status == 400
    assert answer.closed
    assert httpx.get(f"{live.url}/healthz", timeout=5).status_code == 200


@pytest.mark.slow
def test_half_sent_headers_do_not_stall_other_clients(live: Server) -> None:
    """Slow-loris on the headers. Measured: uvicorn (httptools) sets no timeout before a request's
    headers are complete, so these connections stay open until their clients leave (put a proxy
    with a header timeout in front to bound them). They must not slow anyone else down."""
    host, port = live.url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(50)]
    try:
        for sock in held:
            sock.sendall(b"POST " + IMAGES.encode() + b" HTTP/1.1\r\n" + HOST + b"X-Slow: ")
        started = time.monotonic()
        assert httpx.get(f"{live.url}/healthz", timeout=5).status_code == 200
        response = httpx.post(f"{live.url}{IMAGES}", content=VALID, headers=dict(JSON_CT), timeout=10)
        assert response.status_code == 400 and response.json()["error"]["code"] == "1214"
        assert time.monotonic() - started < 5
    finally:
        for sock in held:
            sock.close()


@pytest.mark.slow
def test_after_the_live_catalogue_the_server_generates(live: Server) -> None:
    assert httpx.get(f"{live.url}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{live.url}/readyz", timeout=5).status_code == 200
    response = httpx.post(f"{live.url}{IMAGES}", json=OK, timeout=120)
    assert response.status_code == 200, response.text
    assert httpx.get(response.json()["data"][0]["url"], timeout=10).status_code == 200
    assert live.process.poll() is None
    log = live.log.read_text(errors="replace")
    assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]


def test_client_strings_cannot_forge_lines_in_the_text_log(live: Server) -> None:
    forged = "FORGED-LINE 2026-01-01 00:00:00,000 ERROR cogserve: admin in"
    body = bm(prompt="how to make a pipe bomb", user_id=f"u\n{forged}\r\u2028{forged}")
    response = httpx.post(live.url + IMAGES, content=body, headers=dict(JSON_CT), timeout=30)
    assert response.json()["error"]["code"] == "1301", response.text
    assert httpx.get(f"{live.url}/x%0a{forged.replace(' ', '%20')}", timeout=10).status_code == 404
    log = live.log.read_text(encoding="utf-8")
    assert "user_id u\\n" + forged in log  # the line is there, escaped
    assert not [line for line in log.splitlines() if line.startswith("FORGED-LINE")]
