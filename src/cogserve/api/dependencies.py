"""What every route needs from a request: the app's parts, the caller, the body, the audit note, the
base URL for links, and cancellation when the client leaves. Routes parse, call the service, render.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from starlette.requests import Request

from cogserve.api.body import read_json_object
from cogserve.api.protocol import ImageData, ImageGenerationRequest, WireRequest, validation_error
from cogserve.auth import ApiKey
from cogserve.engine import Engine
from cogserve.engine.scheduler import ImageScheduler
from cogserve.errors import Interrupted
from cogserve.metrics import Metrics
from cogserve.service import ImageRequest, ImageService, StoredImage
from cogserve.service.access import AccessControl, AuditNote
from cogserve.service.jobs import JobService
from cogserve.settings import ServerSettings, Settings

WireT = TypeVar("WireT", bound=WireRequest)
BodyT = TypeVar("BodyT", bound=ImageGenerationRequest)
T = TypeVar("T")


@dataclass
class AppContext:
    """The app's parts, built once by ``create_app`` and kept on ``app.state.cogserve``."""

    settings: Settings
    engine: Engine
    scheduler: ImageScheduler
    service: ImageService
    access: AccessControl
    jobs: JobService
    metrics: Metrics


def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.cogserve
    return ctx


async def caller(request: Request) -> ApiKey | None:
    """The request's API key (None in open mode); raises AuthError. Off the loop: it reads the DB."""
    access = context(request).access
    return await asyncio.to_thread(access.authenticate, request.headers.get("authorization"))


@dataclass
class Call:
    """An authenticated call being audited: what a route hands the service."""

    ctx: AppContext
    key: ApiKey | None
    note: AuditNote


@asynccontextmanager
async def audited_call(request: Request, route: str) -> AsyncIterator[Call]:
    """Authenticate inside an audit block: one audit row per call, whatever its outcome."""
    ctx = context(request)
    async with ctx.access.audit(request.state.request_id, route) as note:
        key = await caller(request)
        note.key_id = key.id if key else None
        yield Call(ctx, key, note)


async def read_body(request: Request, model: type[WireT]) -> WireT:
    """The request's JSON body as ``model``; cogserve's 400s for anything else."""
    data = await read_json_object(request, context(request).settings.server.max_body_bytes)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def image_request(request: Request, call: Call, model: type[BodyT]) -> tuple[BodyT, ImageRequest]:
    """A BigModel image body (sync or async route) and the service request it makes.

    Adopts the client's request_id for the response header and notes the end user for the audit.
    """
    body = await read_body(request, model)
    request_id = body.request_id or request.state.request_id
    request.state.request_id = request_id
    image = body.to_request(call.ctx.settings.model, request_id)
    call.note.user_id = image.user_id
    return body, image


def image_items(
    request: Request, stored: Sequence[StoredImage], response_format: Literal["url", "b64_json"]
) -> list[ImageData]:
    """The ``data`` items of an answer: each image's link, or its PNG inline."""
    if response_format == "b64_json":
        return [ImageData(b64_json=base64.b64encode(image.png).decode("ascii")) for image in stored]
    ctx = context(request)
    base = public_base_url(request, ctx.settings.server)
    return [ImageData(url=ctx.service.image_url(image.image_id, image.expires_at, base)) for image in stored]


#: Says, on an answer whose request wanted enhancement, what became of it (service.enhancer).
ENHANCEMENT_HEADER = "X-Prompt-Enhancement"


def with_revised_prompts(body: dict[str, Any], stored: Sequence[StoredImage]) -> dict[str, Any]:
    """The answer with each ``data`` item's ``revised_prompt``, null included (absent nulls are
    dropped elsewhere, but clients read this one to learn that the prompt was used as sent)."""
    for item, image in zip(body["data"], stored, strict=True):
        item["revised_prompt"] = image.revised_prompt
    return body


def enhancement_headers(stored: Sequence[StoredImage]) -> dict[str, str]:
    enhancement = stored[0].enhancement
    return {} if enhancement is None else {ENHANCEMENT_HEADER: enhancement.header()}


def public_base_url(request: Request, settings: ServerSettings) -> str:
    """``--public-url`` if set; else the request's own address, honouring X-Forwarded-Proto/Host/Prefix
    only from peers in ``forwarded_allow_ips`` (anyone else could point links at their own host)."""
    if settings.public_url:
        return settings.public_url
    base = str(request.base_url).rstrip("/")
    peer = request.client.host if request.client else ""
    trusted = "*" in settings.forwarded_allow_ips or peer in settings.forwarded_allow_ips
    headers = request.headers
    if not trusted or not (headers.get("x-forwarded-host") or headers.get("x-forwarded-proto")):
        return base
    proto = _first(headers.get("x-forwarded-proto")) or request.url.scheme
    host = _first(headers.get("x-forwarded-host")) or request.url.netloc
    prefix = (_first(headers.get("x-forwarded-prefix")) or "").rstrip("/")
    if proto not in ("http", "https") or any(c in host for c in "/\\@ ") or not host:
        return base
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return f"{proto}://{host}{prefix}"


def _first(value: str | None) -> str | None:
    # A chain of proxies appends: "client-facing, next-hop"; the first is what the client used.
    return value.split(",", 1)[0].strip() if value else None


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ``Interrupted``.

    Starlette does not cancel a handler when its client leaves, and a generation can take minutes:
    without this, a closed browser tab would still cost a full pipeline call.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise Interrupted("the client closed the connection before the image was ready")
    return task.result()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
