"""BigModel's images API: generate an image, and fetch one by the link an answer gave.

Each route parses, calls the service, renders; async jobs are in ``api.jobs``.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.requests import Request
from starlette.responses import Response

from cogserve.api.dependencies import (
    ENHANCEMENT_HEADER,
    audited_call,
    context,
    enhancement_headers,
    image_items,
    image_request,
    read_body,
    unless_disconnected,
    with_revised_prompts,
)
from cogserve.api.openapi import error_responses, json_body
from cogserve.api.paths import ENHANCE_PATH, FILES_PATH, IMAGES_PATH
from cogserve.api.protocol import (
    ContentFilterEntry,
    ImageGenerationRequest,
    ImageGenerationResponse,
    PromptEnhanceRequest,
    PromptEnhanceResponse,
)
from cogserve.errors import NotFound

router = APIRouter()


@router.post(
    IMAGES_PATH,
    response_model=ImageGenerationResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 413, 429, 500, 503, 504),
    summary="Generate an image (BigModel CogView-4 API)",
    openapi_extra=json_body(ImageGenerationRequest),
)
async def create_image(request: Request) -> JSONResponse:
    async with audited_call(request, IMAGES_PATH) as call:
        body, image = await image_request(request, call, ImageGenerationRequest)
        (stored,) = await unless_disconnected(
            request, call.ctx.service.generate([image], call.key, call.note)
        )
    response = ImageGenerationResponse(
        created=stored.created,
        data=image_items(request, [stored], body.response_format),
        content_filter=[ContentFilterEntry.model_validate(entry) for entry in stored.content_filter],
        id=image.request_id,
        request_id=image.request_id,
    )
    answer = with_revised_prompts(response.model_dump(exclude_none=True), [stored])
    return JSONResponse(answer, headers=enhancement_headers([stored]))


@router.post(
    ENHANCE_PATH,
    response_model=PromptEnhanceResponse,
    responses=error_responses(400, 401, 403, 413, 429, 500),
    summary="Rewrite a prompt with the enhancer, without generating (cogserve extension)",
    description="The rewrite a generation with `enhance_prompt: true` would use (the same cache), so a "
    "client can show it for review and editing, then generate from the edited text with "
    "`enhance_prompt: false`. Counts against the key's and user's limits like a generation. The prompt "
    "and the rewrite are moderated (1301). If the enhancer is off "
    "or fails, the answer is still 200, with `revised_prompt: null` and the reason in `fallback`.",
    openapi_extra=json_body(PromptEnhanceRequest),
)
async def enhance_prompt(request: Request) -> JSONResponse:
    async with audited_call(request, ENHANCE_PATH) as call:
        body = await read_body(request, PromptEnhanceRequest)
        body.check_length(call.ctx.settings.model)
        call.note.user_id = body.user_id
        enhancement = await call.ctx.service.review(body.prompt, call.key, body.user_id, call.note)
    response = PromptEnhanceResponse(
        prompt=body.prompt,
        revised_prompt=enhancement.revised,
        fallback=enhancement.fallback,
        cached=enhancement.cached,
        request_id=request.state.request_id,
    )
    return JSONResponse(response.model_dump(), headers={ENHANCEMENT_HEADER: enhancement.header()})


@router.get(
    FILES_PATH,
    response_class=FileResponse,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The PNG.",
            "headers": {
                "Cache-Control": {
                    "description": "private, cacheable until the link expires",
                    "schema": {"type": "string"},
                    "required": True,
                }
            },
        },
        **error_responses(404, 500),
    },
    summary="Fetch a generated image (the URL is the capability: no key needed)",
)
async def get_image(name: str, request: Request) -> Response:
    image_id = name.removesuffix(".png")
    if image_id == name:
        raise NotFound("image not found")
    image, expires_at = await context(request).service.image_file(image_id)
    # Cacheable for as long as the link lives; the bytes behind an id never change.
    headers = {
        "Cache-Control": f"private, max-age={max(0, int(expires_at - time.time()))}, immutable",
        "X-Content-Type-Options": "nosniff",  # a PNG, never sniffed into something a browser runs
    }
    if image.path is not None:
        return FileResponse(image.path, media_type="image/png", headers=headers)
    assert image.chunks is not None
    # A sync iterator: Starlette pulls each chunk from the store in a worker thread.
    headers["Content-Length"] = str(image.size)
    return StreamingResponse(image.chunks, media_type="image/png", headers=headers)
