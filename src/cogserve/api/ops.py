"""Operations routes: liveness, readiness and Prometheus metrics (public: nothing secret in them)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cogserve.api.dependencies import context
from cogserve.api.errors import api_path, error_response
from cogserve.api.openapi import error_responses
from cogserve.api.protocol import Health, Readiness
from cogserve.errors import ServiceUnavailable, StorageError
from cogserve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        }
    },
    summary="Prometheus metrics (public, like /healthz: counts and timings, nothing secret)",
)
async def metrics(request: Request) -> Response:
    return Response(context(request).metrics.render(), media_type=METRICS_CONTENT_TYPE)


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    response_model_exclude_none=True,
    summary="The model is loaded and warmed up, and the database answers",
    responses=error_responses(503),
)
async def readyz(request: Request) -> Readiness | Response:
    # "Not ready" is an answer here, not a failure: returned, so the error handler does not log it
    # (a balancer polls this every few seconds while the model loads).
    ctx = context(request)
    if not ctx.service.ready:
        message = ctx.service.load_error or "the model is still loading"
        return _not_ready(request, ServiceUnavailable(message, headers={"Retry-After": "5"}))
    try:
        # Not ready while the database is down: every generation would fail with 503 anyway.
        await ctx.service.check_database()
    except StorageError as exc:
        return _not_ready(request, exc)
    info = ctx.engine.info
    stats = ctx.scheduler.stats
    return Readiness(
        status="ready",
        model=info.name,
        builtin=info.builtin,
        device=info.device,
        dtype=info.dtype,
        queued=stats.queued,
        running=stats.running,
        batches=stats.batches,
        batched_images=stats.batched_images,
        replicas=stats.replicas,
    )


def _not_ready(request: Request, error: StorageError | ServiceUnavailable) -> Response:
    return error_response(error, api_path(request.scope), request.scope)
