"""HTTP routes. Each one parses, delegates to the service, and shapes the answer."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from cogserve.api.body import read_json_object
from cogserve.api.disconnect import unless_disconnected
from cogserve.api.errors import error_response
from cogserve.api.protocol import (
    ContentFilterEntry,
    ErrorEnvelope,
    ImageData,
    ImageGenerationRequest,
    ImageGenerationResponse,
    validation_error,
)
from cogserve.api.urls import public_base_url
from cogserve.engine import Engine
from cogserve.engine.scheduler import ImageScheduler
from cogserve.errors import NotFound, ServiceUnavailable
from cogserve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from cogserve.metrics import Metrics
from cogserve.service import ImageService
from cogserve.service.access import AccessControl
from cogserve.service.jobs import JobService
from cogserve.settings import Settings

IMAGES_PATH = "/api/paas/v4/images/generations"


@dataclass
class AppContext:
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


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorEnvelope} for status in statuses}


router = APIRouter()


@router.post(
    IMAGES_PATH,
    response_model=ImageGenerationResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 413, 429, 500, 503, 504),
    summary="Generate an image (BigModel CogView-4 API)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ImageGenerationRequest.model_json_schema()}},
        }
    },
)
async def create_image(request: Request) -> JSONResponse:
    ctx = context(request)
    async with ctx.access.audit(request.state.request_id, IMAGES_PATH) as note:
        key = await asyncio.to_thread(ctx.access.authenticate, request.headers.get("authorization"))
        note.key_id = key.id if key else None
        data = await read_json_object(request, ctx.settings.server.max_body_bytes)
        try:
            body = ImageGenerationRequest.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        request_id = body.request_id or request.state.request_id
        request.state.request_id = request_id
        job = body.to_job(ctx.settings.model, request_id)
        note.user_id = job.user_id
        stored = await unless_disconnected(request, ctx.service.generate(job, key, note))
    if job.response_format == "b64_json":
        item = ImageData(b64_json=base64.b64encode(stored.png).decode("ascii"))
    else:
        base = public_base_url(request, ctx.settings.server)
        item = ImageData(url=ctx.service.image_url(stored.image_id, stored.expires_at, base))
    response = ImageGenerationResponse(
        created=stored.created,
        data=[item],
        content_filter=[ContentFilterEntry.model_validate(entry) for entry in stored.content_filter],
        id=request_id,
        request_id=request_id,
    )
    return JSONResponse(response.model_dump(exclude_none=True))


@router.get(
    "/files/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 500)},
    summary="Fetch a generated image (the URL is the capability: no key needed)",
)
async def get_image(name: str, request: Request) -> Response:
    image_id = name.removesuffix(".png")
    if image_id == name:
        raise NotFound("image not found")
    image, expires_at = await context(request).service.image_file(image_id)
    # Cacheable for as long as the link lives; the bytes behind an id never change.
    headers = {"Cache-Control": f"private, max-age={max(0, int(expires_at - time.time()))}, immutable"}
    if image.path is not None:
        return FileResponse(image.path, media_type="image/png", headers=headers)
    assert image.chunks is not None
    # A sync iterator: Starlette pulls each chunk from the store in a worker thread.
    headers["Content-Length"] = str(image.size)
    return StreamingResponse(image.chunks, media_type="image/png", headers=headers)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics (public, like /healthz: counts and timings, nothing secret)",
)
async def metrics(request: Request) -> Response:
    return Response(context(request).metrics.render(), media_type=METRICS_CONTENT_TYPE)


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The model is loaded and warmed up", responses=error_responses(503))
async def readyz(request: Request) -> Response:
    ctx = context(request)
    if not ctx.service.ready:
        message = ctx.service.load_error or "the model is still loading"
        return error_response(ServiceUnavailable(message, headers={"Retry-After": "5"}))
    info = ctx.engine.info
    stats = ctx.scheduler.stats
    return JSONResponse(
        {
            "status": "ready",
            "model": info.name,
            "builtin": info.builtin,
            "device": info.device,
            "dtype": info.dtype,
            "queued": stats.queued,
            "running": stats.running,
            "batches": stats.batches,
            "batched_images": stats.batched_images,
            **({"replicas": stats.replicas} if stats.replicas is not None else {}),
        }
    )
