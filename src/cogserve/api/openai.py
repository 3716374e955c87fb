"""OpenAI-compatible routes under ``/v1``: image generations and the model list.

Code written for OpenAI's images API (the ``openai`` SDK included) works against cogserve by
pointing ``base_url`` at ``<server>/v1``. Errors on these paths use OpenAI's envelope (api.errors).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from starlette.requests import Request

from cogserve.api.dependencies import (
    audited_call,
    caller,
    context,
    enhancement_headers,
    image_items,
    read_body,
    unless_disconnected,
    with_revised_prompts,
)
from cogserve.api.openai_protocol import (
    OpenAIErrorEnvelope,
    OpenAIImageRequest,
    OpenAIImagesResponse,
    OpenAIModel,
    OpenAIModelList,
    unknown_model,
)
from cogserve.api.openapi import KEY_SECURITY, error_responses, json_body
from cogserve.api.paths import OPENAI_IMAGES_PATH, OPENAI_MODELS_PATH


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(*statuses, model=OpenAIErrorEnvelope)


router = APIRouter(tags=["OpenAI-compatible"])


@router.post(
    OPENAI_IMAGES_PATH,
    response_model=OpenAIImagesResponse,
    response_model_exclude_none=True,
    responses=_errors(400, 401, 403, 404, 413, 429, 500, 503, 504),
    summary="Generate images (OpenAI images API)",
    description="OpenAI's `images.generate`, served by CogView-4. The n images of one call are admitted "
    "once (one request against the key's and user's limits) and generated as one batch. Sizes follow "
    "cogserve's rules; `seed` is a cogserve extension; fields cogserve does not act on are ignored.",
    openapi_extra=json_body(OpenAIImageRequest),
)
async def create_images(request: Request) -> JSONResponse:
    async with audited_call(request, OPENAI_IMAGES_PATH) as call:
        body = await read_body(request, OpenAIImageRequest)
        images = body.to_requests(call.ctx.settings.model, request.state.request_id)
        call.note.user_id = body.user_id
        stored = await unless_disconnected(request, call.ctx.service.generate(images, call.key, call.note))
    response = OpenAIImagesResponse(
        created=min(image.created for image in stored),
        data=image_items(request, stored, body.response_format),
    )
    answer = with_revised_prompts(response.model_dump(exclude_none=True), stored)
    return JSONResponse(answer, headers=enhancement_headers(stored))


@router.get(
    OPENAI_MODELS_PATH,
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
    f"{OPENAI_MODELS_PATH}/{{model}}",
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
