"""Reading a JSON request body strictly: content type, no content coding, size limit, UTF-8, an
object at the top, and values every later layer can hold (no NaN, no lone surrogates, bounded depth)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from cogserve.errors import BodyTooLarge, Interrupted, InvalidRequest, UnsupportedEncoding

#: Deepest nesting of arrays and objects accepted. The SDKs nest two levels (sensitive_word_check);
#: a fixed bound keeps the JSON encoders and the database from meeting a recursion limit later.
MAX_DEPTH = 32
#: Longest integer literal, in digits: Python's own conversion limit, raised as a 400 here.
MAX_INT_DIGITS = 4300
# Lone UTF-16 surrogates: a JSON "\ud800" escape decodes to one, and UTF-8 cannot encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")
# The rest of the body may still be on the wire: answer and close rather than read it.
_CLOSE = {"Connection": "close"}


class _Unreadable(ValueError):
    """A JSON value cogserve will not hold (NaN, Infinity, an absurdly long integer)."""


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    if not _is_json(request.headers.get("content-type", "")):
        raise InvalidRequest("the request body must be JSON: send Content-Type: application/json")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Inflating would let a 1 MiB gzip bomb expand past every size limit.
        raise UnsupportedEncoding(
            f"Content-Encoding '{encoding}' is not accepted: send the JSON body uncompressed",
            headers={"Accept-Encoding": "identity", **_CLOSE},
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"request body exceeds {max_bytes} bytes", headers=_CLOSE)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(f"request body exceeds {max_bytes} bytes", headers=_CLOSE)
            chunks.append(chunk)
    except ClientDisconnect:
        raise Interrupted("the client closed the connection while sending the body") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidRequest("the request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the request body is not valid UTF-8") from exc
    try:
        data = json.loads(
            text, parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float
        )
    except RecursionError:
        raise InvalidRequest(f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except _Unreadable as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except ValueError as exc:  # JSONDecodeError
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    _check_values(data)
    return data


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON (RFC 8259) does not have.
    raise _Unreadable(f"{name} is not a JSON number")


def _parse_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise _Unreadable(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unreadable(f"the number {text[:40]} is out of range")
    return value


def _check_values(data: dict[str, Any]) -> None:
    """Refuse nesting past ``MAX_DEPTH`` and strings that UTF-8 cannot hold (keys included)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                raise InvalidRequest(
                    "the request body holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
                    "without its pair), which is not a character"
                )
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"the request body nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((key, depth) for key in value)
            stack.extend((item, depth + 1) for item in value.values())
        else:
            stack.extend((item, depth + 1) for item in value)
