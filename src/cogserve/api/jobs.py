"""Async image jobs over HTTP, in BigModel's async style: submit, poll the result, cancel."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import Request

from cogserve.api.protocol import (
    AsyncImageGenerationRequest,
    AsyncResult,
    AsyncTask,
    ContentFilterEntry,
    ErrorBody,
    ImageData,
)
from cogserve.api.routes import KEY_SECURITY, caller, context, error_responses, image_request
from cogserve.api.urls import public_base_url
from cogserve.service.jobs import ASYNC_PATH, JobView

RESULT_PATH = "/api/paas/v4/async-result/{job_id}"
CANCEL_PATH = ASYNC_PATH + "/{job_id}/cancel"

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
    openapi_extra={
        **KEY_SECURITY,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": AsyncImageGenerationRequest.model_json_schema()}},
        },
    },
)
async def submit_job(request: Request) -> JSONResponse:
    ctx = context(request)
    async with ctx.access.audit(request.state.request_id, ASYNC_PATH + " (submit)") as note:
        key, body, job = await image_request(request, ctx, note, AsyncImageGenerationRequest)
        base_url = public_base_url(request, ctx.settings.server)
        row = await ctx.jobs.submit(job, key, base_url, body.webhook_url)
    task = AsyncTask(id=row.id, request_id=row.request_id, model=row.model, task_status="PROCESSING")
    return JSONResponse(task.model_dump())


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
        images = [ImageData(url=view.image_url)]
        result.created = view.created
        result.image_result = images
        result.data = images
        result.content_filter = [ContentFilterEntry.model_validate(entry) for entry in view.content_filter]
    elif view.state == "fail":
        result.error = ErrorBody(code=view.error_code or "500", message=view.error_message or "failed")
    return result.model_dump(exclude_none=True)
