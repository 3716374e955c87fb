"""OpenAI-compatible routes under ``/v1``: image generations and the model list.

Code written for OpenAI's images API (the ``openai`` SDK included) works against cogserve by
pointing ``base_url`` at ``<server>/v1``. Errors on these paths use OpenAI's envelope (api.errors).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from cogserve.api.disconnect import unless_disconnected
from cogserve.api.openai_protocol import (
    OpenAIErrorEnvelope,
    OpenAIImageRequest,
    OpenAIImagesResponse,
    OpenAIModel,
    OpenAIModelList,
    unknown_model,
)
from cogserve.api.protocol import ImageData
from cogserve.api.routes import KEY_SECURITY, caller, context, error_responses, read_body
from cogserve.api.urls import public_base_url
from cogserve.auth import ApiKey
from cogserve.errors import CogserveError
from cogserve.service import ImageJob, ImageService, StoredImage
from cogserve.service.access import AuditNote

PREFIX = "/v1"
IMAGES_PATH = f"{PREFIX}/images/generations"


class _OpenAIRoute(APIRoute):
    """A route whose unexpected exceptions become a 500 ``CogserveError``.

    The error handlers then answer it in OpenAI's envelope; left alone it would reach the
    middleware's catch-all, which does not know the path and answers in BigModel's.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (CogserveError, StarletteHTTPException, RequestValidationError):
                raise
            except Exception as exc:
                request_id = getattr(request.state, "request_id", "-")
                raise CogserveError(f"internal error; request id {request_id}") from exc

        return guarded


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(*statuses, model=OpenAIErrorEnvelope)


router = APIRouter(route_class=_OpenAIRoute, tags=["OpenAI-compatible"])


@router.post(
    IMAGES_PATH,
    response_model=OpenAIImagesResponse,
    response_model_exclude_none=True,
    responses=_errors(400, 401, 403, 404, 413, 429, 500, 503, 504),
    summary="Generate images (OpenAI images API)",
    description="OpenAI's `images.generate`, served by CogView-4. The n images of one call are admitted "
    "once (one request against the key's and user's limits) and generated as one batch. Sizes follow "
    "cogserve's rules; `seed` is a cogserve extension; fields cogserve does not act on are ignored.",
    openapi_extra={
        **KEY_SECURITY,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": OpenAIImageRequest.model_json_schema()}},
        },
    },
)
async def create_images(request: Request) -> JSONResponse:
    ctx = context(request)
    async with ctx.access.audit(request.state.request_id, IMAGES_PATH) as note:
        key = await caller(request)
        note.key_id = key.id if key else None
        body = await read_body(request, ctx, OpenAIImageRequest)
        jobs = body.to_jobs(ctx.settings.model, request.state.request_id)
        note.user_id = body.user_id
        stored = await unless_disconnected(request, _generate(ctx.service, jobs, key, note))
    if body.response_format == "b64_json":
        items = [ImageData(b64_json=base64.b64encode(image.png).decode("ascii")) for image in stored]
    else:
        base = public_base_url(request, ctx.settings.server)
        items = [
            ImageData(url=ctx.service.image_url(image.image_id, image.expires_at, base)) for image in stored
        ]
    response = OpenAIImagesResponse(created=min(image.created for image in stored), data=items)
    return JSONResponse(response.model_dump(exclude_none=True))


@router.get(
    f"{PREFIX}/models",
    response_model=OpenAIModelList,
    responses=_errors(401, 500),
    summary="List the model codes (OpenAI models API)",
    description="Every code a request may send as `model`; all are served by the loaded pipeline.",
    openapi_extra=KEY_SECURITY,
)
async def list_models(request: Request) -> OpenAIModelList:
    ctx = context(request)
    await caller(request)
    return OpenAIModelList(data=[OpenAIModel(id=code) for code in ctx.settings.model.codes])


@router.get(
    f"{PREFIX}/models/{{model}}",
    response_model=OpenAIModel,
    responses=_errors(401, 404, 500),
    summary="Describe one model code (OpenAI models API)",
    openapi_extra=KEY_SECURITY,
)
async def get_model(
    request: Request, model: Annotated[str, Path(description="A model code, e.g. cogview-4.")]
) -> OpenAIModel:
    ctx = context(request)
    await caller(request)
    if model not in ctx.settings.model.codes:
        raise unknown_model(model, ctx.settings.model)
    return OpenAIModel(id=model)


async def _generate(
    service: ImageService, jobs: list[ImageJob], key: ApiKey | None, note: AuditNote
) -> list[StoredImage]:
    """All images of one request under one admission, submitted together so they share a batch."""
    async with service.admitted(key, jobs[0].user_id):
        watermark = service.watermark_wanted(jobs[0], key)
        # The audit row has room for one image id: the first image's.
        tasks = [
            asyncio.ensure_future(service.produce(job, watermark, note if i == 0 else AuditNote()))
            for i, job in enumerate(jobs)
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # gather leaves the siblings of a failed image running: stop them rather than spend the
            # GPU on images nobody will receive (finished ones stay stored until they expire).
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise
