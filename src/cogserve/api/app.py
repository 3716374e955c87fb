"""The app factory: ``create_app(settings)`` builds everything; no work happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from cogserve import __version__
from cogserve.api import bigmodel, credentials, jobs, openai, ops, web
from cogserve.api.dependencies import AppContext
from cogserve.api.errors import install_error_handlers
from cogserve.api.middleware import RequestContextMiddleware
from cogserve.api.openapi import install_openapi
from cogserve.api.paths import ASYNC_PATH
from cogserve.auth import DatabaseLimiter
from cogserve.engine import Engine, create_engine
from cogserve.engine.lora import LoraRegistry
from cogserve.engine.scheduler import ImageScheduler, Scheduler
from cogserve.errors import CogserveError
from cogserve.metrics import Metrics
from cogserve.service import ImageService, Safety
from cogserve.service.access import OPEN_MODE_WARNING, AccessControl
from cogserve.service.jobs import JobService
from cogserve.settings import Settings
from cogserve.storage import MetadataStore, create_image_store
from cogserve.storage.accounts import AccountStore
from cogserve.storage.jobs import JobStore

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    on_fatal: Callable[[str], None] | None = None,
    scheduler: ImageScheduler | None = None,
) -> FastAPI:
    """Build the ASGI app. ``engine`` lets tests wrap the real one; ``on_fatal`` is told when the
    model cannot load, so the CLI can exit instead of serving 503 forever. ``scheduler`` replaces
    the in-process one (Ray: model replicas elsewhere, with ``engine`` standing for them)."""
    engine = engine or create_engine(settings)
    metrics = Metrics()
    loras = LoraRegistry.from_settings(settings)
    if loras is not None:
        loras.listener = metrics.lora_event
        engine.attach_loras(loras)
    device = _device_hint(settings)
    metadata = MetadataStore(settings.database_url)
    # Limits live in the database, so every process on it (Ray ingresses, hosts behind a balancer)
    # counts against the same numbers.
    limiter = DatabaseLimiter(settings.database_url)
    access = AccessControl(settings, AccountStore(metadata.engine), limiter)
    scheduler = scheduler or Scheduler(engine, settings.scheduler, device=device, on_batch=metrics.batch)
    files = create_image_store(settings)
    service = ImageService(
        settings,
        scheduler,
        files,
        metadata,
        access,
        Safety.from_settings(settings),
        metrics,
        engine=engine,
        loras=loras,
    )
    job_service = JobService(
        settings,
        service,
        scheduler,
        JobStore(metadata.engine),
        access,
        metrics,
        render=jobs.render,
        audit_route=ASYNC_PATH,
    )
    _watch(metrics, service, scheduler, job_service, device)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(describe_storage(settings))
        await asyncio.to_thread(metadata.create_schema)
        await limiter.start()
        if await asyncio.to_thread(access.auth_required):
            log.info("auth: API keys required (%s)", _why_auth(settings))
        else:
            log.warning(OPEN_MODE_WARNING)
        scheduler.start()
        tasks = [
            asyncio.create_task(_load_model(engine, service, settings, on_fatal)),
            asyncio.create_task(service.run_sweeper()),
            asyncio.create_task(job_service.run_upkeep()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await job_service.stop()  # before the scheduler, so running jobs are handed back, not failed
            await scheduler.stop()
            await limiter.stop()  # last: running jobs held limit slots until they were handed back
            metadata.close()

    app = FastAPI(
        title="cogserve",
        version=__version__,
        description="Self-hosted CogView-4 image generation, wire-compatible with BigModel's images API.",
        lifespan=lifespan,
    )
    app.state.cogserve = AppContext(
        settings=settings,
        engine=engine,
        scheduler=scheduler,
        service=service,
        access=access,
        jobs=job_service,
        metrics=metrics,
    )
    for module in (bigmodel, credentials, jobs, openai, ops, web):
        app.include_router(module.router)
    install_error_handlers(app)
    install_openapi(app, settings)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, server=settings.server)
    if settings.server.cors_allow_origins:
        # Outermost, so every answer (the 500 net's included) carries the headers a browser needs to
        # read it. Closed by default: the playground is same-origin and needs none.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-Id"],
            allow_credentials=False,
        )
    return app


def _watch(
    metrics: Metrics, service: ImageService, scheduler: ImageScheduler, jobs: JobService, device: str
) -> None:
    """Gauges read at scrape time from the parts that own the numbers."""
    metrics.gauge("cogserve_ready", "1 once the model is loaded and warm.", lambda: float(service.ready))
    metrics.gauge(
        "cogserve_queue_depth", "Images waiting in the scheduler's queue.", lambda: scheduler.stats.queued
    )
    metrics.gauge(
        "cogserve_running_images", "Images in the pipeline call now running.", lambda: scheduler.stats.running
    )
    metrics.gauge(
        "cogserve_async_jobs_active", "Async jobs this process is working on.", lambda: jobs.running
    )
    metrics.watch_gpu_memory(device)


def describe_storage(settings: Settings) -> str:
    """The start-up line saying where things are kept: the data dir as an absolute path (a relative
    one depends on where the server was started), the metadata database and the image store."""
    from sqlalchemy.engine import make_url

    database = make_url(settings.database_url).render_as_string(hide_password=True)
    images = settings.storage.image_store or "files in the data dir"
    return (
        f"cogserve {__version__}: data dir {settings.storage.data_dir.resolve()}; "
        f"metadata {database}; images {images}"
    )


def _why_auth(settings: Settings) -> str:
    return "--require-auth" if settings.auth.require_auth else "a key exists"


def _address(settings: Settings) -> str:
    server = settings.server
    return server.public_url or f"http://{server.host}:{server.port}"


def _device_hint(settings: Settings) -> str:
    # Only the batch-size default depends on it; a device that cannot be used fails at load, clearly.
    from cogserve.engine.loader import resolve_device

    try:
        return resolve_device(settings.model.device)
    except CogserveError:
        return "cpu"


async def _load_model(
    engine: Engine, service: ImageService, settings: Settings, on_fatal: Callable[[str], None] | None
) -> None:
    model = settings.model
    log.info(
        "loading the model %s (device %s, dtype %s)", model.path or model.builtin, model.device, model.dtype
    )
    try:
        await asyncio.to_thread(engine.load)
        if settings.model.warmup:
            await asyncio.to_thread(engine.warmup)
    except Exception as exc:
        reason = exc.message if isinstance(exc, CogserveError) else f"{type(exc).__name__}: {exc}"
        service.load_error = f"the model failed to load: {reason}"
        log.error(service.load_error, exc_info=exc)
        if on_fatal is not None:
            on_fatal(service.load_error)
        return
    info = engine.info
    # Logged before the flag flips, so whoever waits on readiness also finds the line written.
    log.info(
        "ready: %s on %s (%s); serving %s (playground /, BigModel API /api/paas/v4, OpenAI API /v1)",
        info.name,
        info.device,
        info.dtype,
        _address(settings),
    )
    service.ready = True
