"""Async image jobs over HTTP, in BigModel's async style: submit, poll the result, cancel."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import Request

from cogserve.api.dependencies import (
    ENHANCEMENT_HEADER,
    audited_call,
    caller,
    context,
    image_request,
    public_base_url,
)
from cogserve.api.openapi import KEY_SECURITY, error_responses, json_body
from cogserve.api.paths import ASYNC_PATH, CANCEL_PATH, RESULT_PATH
from cogserve.api.protocol import (
    AsyncImageGenerationRequest,
    AsyncResult,
    AsyncTask,
    ContentFilterEntry,
    ErrorBody,
    ImageData,
)
from cogserve.service.jobs import JobView

_TASK_STATUS: dict[str, Literal["PROCESSING", "SUCCESS", "FAIL"]] = {
    "queued": "PROCESSING",
    "running": "PROCESSING",
    "success": "SUCCESS",
    "fail": "FAIL",
}

router = APIRouter()


@router.post(
    ASYNC_PATH,
    response_model=AsyncTask,
    responses=error_responses(400, 401, 403, 413, 429, 500, 503),
    summary="Submit an image job; answers at once with its id (BigModel async API)",
    openapi_extra=json_body(AsyncImageGenerationRequest),
)
async def submit_job(request: Request) -> JSONResponse:
    async with audited_call(request, ASYNC_PATH + " (submit)") as call:
        body, image = await image_request(request, call, AsyncImageGenerationRequest)
        base_url = public_base_url(request, call.ctx.settings.server)
        row, enhancement = await call.ctx.jobs.submit(image, call.key, base_url, body.webhook_url, call.note)
    task = AsyncTask(id=row.id, request_id=row.request_id, model=row.model, task_status="PROCESSING")
    headers = {} if enhancement is None else {ENHANCEMENT_HEADER: enhancement.header()}
    return JSONResponse(task.model_dump(), headers=headers)


@router.get(
    RESULT_PATH,
    response_model=AsyncResult,
    response_model_exclude_none=True,
    responses=error_responses(401, 404, 500),
    summary="Where an async job stands, and its image once done",
    openapi_extra=KEY_SECURITY,
)
async def job_result(job_id: str, request: Request) -> JSONResponse:
    ctx = context(request)
    base_url = public_base_url(request, ctx.settings.server)
    view = await ctx.jobs.view(job_id, await caller(request), base_url)
    return JSONResponse(render(view))


@router.post(
    CANCEL_PATH,
    response_model=AsyncResult,
    response_model_exclude_none=True,
    responses=error_responses(401, 404, 500),
    summary="Cancel a queued or running job (cogserve extension); a finished one is left as it is",
    openapi_extra=KEY_SECURITY,
)
async def cancel_job(job_id: str, request: Request) -> JSONResponse:
    ctx = context(request)
    base_url = public_base_url(request, ctx.settings.server)
    view = await ctx.jobs.cancel(job_id, await caller(request), base_url)
    return JSONResponse(render(view))


def render(view: JobView) -> dict[str, Any]:
    """The async-result body: also what a webhook receives."""
    result = AsyncResult(
        id=view.id,
        request_id=view.request_id,
        model=view.model,
        task_status=_TASK_STATUS[view.state],
        state=view.state,
        progress=view.progress,
        queue_position=view.queue_position,
    )
    if view.state == "success" and view.image_url is not None:
        images = [ImageData(url=view.image_url, revised_prompt=view.revised_prompt)]
        result.created = view.created
        result.image_result = images
        result.data = images
        result.content_filter = [ContentFilterEntry.model_validate(entry) for entry in view.content_filter]
    elif view.state == "fail":
        result.error = ErrorBody(code=view.error_code or "500", message=view.error_message or "failed")
    return result.model_dump(exclude_none=True)
