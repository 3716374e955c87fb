"""OpenAI-compatible routes under ``/v1``: image generations and the model list.

Code written for OpenAI's images API (the ``openai`` SDK included) works against cogserve by
pointing ``base_url`` at ``<server>/v1``. Errors on these paths use OpenAI's envelope (api.errors).
"""

from __future__ import annotations

import asyncio
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
    adapter_model,
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
        adapters = await asyncio.to_thread(call.ctx.service.lora_names) if body.model else []
        images = body.to_requests(call.ctx.settings.model, request.state.request_id, adapters)
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
    response_model_exclude_none=True,
    responses=_errors(401, 500),
    summary="List the model codes and LoRA adapters (OpenAI models API)",
    description="Every code a request may send as `model`; all are served by the loaded pipeline. Then the "
    "LoRA adapters served (a `model`, or an entry of `loras`), each with `parent` = the model code it "
    "applies to and its details under `lora`.",
    openapi_extra=KEY_SECURITY,
)
async def list_models(request: Request) -> OpenAIModelList:
    ctx = context(request)
    await caller(request)
    codes = ctx.settings.model.codes
    adapters = [] if ctx.service.loras is None else await asyncio.to_thread(ctx.service.loras.adapters)
    return OpenAIModelList(
        data=[*(OpenAIModel(id=code) for code in codes), *(adapter_model(a, codes[0]) for a in adapters)]
    )


@router.get(
    f"{OPENAI_MODELS_PATH}/{{model}}",
    response_model=OpenAIModel,
    response_model_exclude_none=True,
    responses=_errors(401, 404, 500),
    summary="Describe one model code (OpenAI models API)",
    openapi_extra=KEY_SECURITY,
)
async def get_model(
    request: Request, model: Annotated[str, Path(description="A model code, e.g. cogview-4.")]
) -> OpenAIModel:
    ctx = context(request)
    await caller(request)
    if model in ctx.settings.model.codes:
        return OpenAIModel(id=model)
    adapter = None if ctx.service.loras is None else await asyncio.to_thread(ctx.service.loras.get, model)
    if adapter is None:
        raise unknown_model(model, ctx.settings.model)
    return adapter_model(adapter, ctx.settings.model.codes[0])
