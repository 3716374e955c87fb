"""Async jobs: submit now, poll (or be called back) later; they outlive the process that took them.

- ``submit`` runs every check a sync request gets before answering (ready, queue room, key and user
  limits, watermark permission, webhook host), records the job and starts it in the background. The
  job holds its place within the key's and user's limits until it ends, like a sync request.
- Prompt moderation runs in the job, so a refused prompt is a job that FAILs with 1301.
- The job's row is leased to this process and renewed while it runs (``storage.jobs``). After a
  crash, even kill -9, the lease lapses and this or another process claims the job and runs it
  again from its stored request (same seed, same image), up to ``max_attempts`` runs; after that it
  FAILs saying why. So no job stays PROCESSING forever.
- A graceful stop hands running jobs back at once (queued, lease lapsed) for the next process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from cogserve.auth import ApiKey
from cogserve.engine import GenerationParams, ProgressEvent
from cogserve.engine.scheduler import ImageScheduler, Reservation
from cogserve.errors import CogserveError, Interrupted, NotFound, QueueFull, RequestTimeout
from cogserve.metrics import Metrics
from cogserve.service.access import AccessControl, AuditNote
from cogserve.service.enhancer import Enhancement
from cogserve.service.generation import ImageRequest, ImageService
from cogserve.service.webhooks import check_webhook_url, deliver
from cogserve.settings import Settings
from cogserve.storage.jobs import ACTIVE, JobOutcome, JobRow, JobStore, Status, is_job_id, new_job_id

log = logging.getLogger(__name__)

CANCELLED_MESSAGE = "the job was cancelled by its owner"


@dataclass(frozen=True)
class JobView:
    """Where a job stands, as its owner may see it."""

    id: str
    request_id: str
    model: str
    state: Status
    progress: int
    queue_position: int | None
    #: On success: the image's link (a presigned URL or the server's /files path).
    image_url: str | None = None
    image_id: str | None = None
    created: int | None = None
    content_filter: list[dict[str, Any]] = field(default_factory=list)
    #: The enhancer's rewrite the image is made from; None when the prompt is used as sent.
    revised_prompt: str | None = None
    error_code: str | None = None
    error_message: str | None = None


#: Turns a finished job into the body its webhook POSTs (the API's result shape).
Renderer = Callable[[JobView], dict[str, Any]]


@dataclass(eq=False)
class _Local:
    """A job this process is running."""

    request_id: str
    progress: int = 0
    task: asyncio.Task[None] | None = None

    def on_progress(self, event: ProgressEvent) -> None:
        # 100 means stored and answerable; the last step is not quite that.
        self.progress = min(99, event.step * 100 // max(1, event.total))


class JobService:
    def __init__(
        self,
        settings: Settings,
        images: ImageService,
        scheduler: ImageScheduler,
        store: JobStore,
        access: AccessControl,
        metrics: Metrics,
        render: Renderer,
        audit_route: str,
    ) -> None:
        """``render`` makes a webhook's body; ``audit_route`` names the route in a job's audit row."""
        self._settings = settings
        self._audit_route = audit_route
        self._jobs = settings.jobs
        self._images = images
        self._scheduler = scheduler
        self._store = store
        self._access = access
        self._metrics = metrics
        self._render = render
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._local: dict[str, _Local] = {}
        self._delivering: set[str] = set()  # jobs whose webhook this process is sending
        self._background: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._local)

    # -- the API's calls ---------------------------------------------------------------------

    async def submit(
        self,
        job: ImageRequest,
        key: ApiKey | None,
        base_url: str,
        webhook_url: str | None = None,
        note: AuditNote | None = None,
    ) -> tuple[JobRow, Enhancement | None]:
        """Admit the job, enhance its prompt if wanted (now, so the client learns at once how that
        went), store it and start it; the job's row and what became of its enhancement."""
        self._images.check_ready()
        if webhook_url is not None:
            check_webhook_url(webhook_url, self._jobs.webhook_allow)
        # Held until the job ends (``_run`` closes the stack), like a sync request's admission:
        # the limits and the queue place are taken now, so a full queue is a 429 here, not a
        # failed job later.
        stack = AsyncExitStack()
        watermark, places = await stack.enter_async_context(self._images.admission(job, key))
        try:
            job, enhancement = await self._images.enhanced(job, note or AuditNote())
        except BaseException:
            await stack.aclose()
            raise
        now = time.time()
        row = JobRow(
            id=new_job_id(),
            key_id=key.id if key else None,
            request_id=job.request_id,
            model=job.model,
            user_id=job.user_id,
            status="queued",
            created_at=now,
            updated_at=now,
            spec=json.dumps({"job": asdict(job), "watermark": watermark, "base_url": base_url}),
            progress=0,
            worker=self.worker,
            lease_until=now + self._jobs.lease_s,
            attempts=1,
            webhook_url=webhook_url,
        )
        try:
            await asyncio.to_thread(self._store.add, row)
        except BaseException:
            await stack.aclose()
            raise
        self._start(row, stack, places)
        return row, enhancement

    async def view(self, job_id: str, key: ApiKey | None, base_url: str) -> JobView:
        return self._view_of(await self._owned(job_id, key), base_url)

    async def cancel(self, job_id: str, key: ApiKey | None, base_url: str) -> JobView:
        """Cancel a queued or running job (here or in another process); a finished one is unchanged."""
        row = await self._owned(job_id, key)
        if row.status in ACTIVE:
            code = Interrupted.code
            if await asyncio.to_thread(self._store.cancel, job_id, code, CANCELLED_MESSAGE):
                self._metrics.job_finished("FAIL")
                local = self._local.get(job_id)
                if local is not None and local.task is not None:
                    local.task.cancel()
                # A job running elsewhere learns of it at its next lease renewal.
            row = await self._owned(job_id, key)
        return self._view_of(row, base_url)

    # -- running -----------------------------------------------------------------------------

    def _start(self, row: JobRow, stack: AsyncExitStack | None, places: Reservation | None = None) -> None:
        local = _Local(request_id=row.request_id)
        self._local[row.id] = local
        local.task = asyncio.get_running_loop().create_task(self._run(row, local, stack, places))

    async def _run(
        self, row: JobRow, local: _Local, stack: AsyncExitStack | None, places: Reservation | None
    ) -> None:
        spec = json.loads(row.spec)
        job = _job_from(spec["job"])
        outcome: JobOutcome | None = None
        try:
            async with self._access.audit(job.request_id, self._audit_route) as note:
                note.key_id, note.user_id = row.key_id, job.user_id
                remaining = self._jobs.timeout_s - (time.time() - row.created_at)
                if remaining <= 0:
                    raise RequestTimeout(f"the job was not done within {self._jobs.timeout_s:g} s")
                stored = await self._images.produce(
                    job,
                    spec["watermark"],
                    note,
                    local.on_progress,
                    schedule_id=row.id,
                    timeout_s=remaining,
                    reservation=places,
                )
            outcome = JobOutcome(
                status="success",
                image_id=stored.image_id,
                image_created=stored.created,
                content_filter=json.dumps(stored.content_filter),
            )
        except asyncio.CancelledError:
            raise  # cancelled by its owner (the row already says so) or handed back at stop
        except CogserveError as exc:
            outcome = JobOutcome(status="fail", error_code=exc.code, error_message=exc.message)
        except Exception:
            log.exception("async job %s failed", row.id)
            outcome = JobOutcome(
                status="fail", error_code="500", error_message=f"internal error in job {row.id}"
            )
        finally:
            self._local.pop(row.id, None)
            if stack is not None:
                await stack.aclose()
            if places is not None:
                places.release()  # a resumed job's place (a submitted one's goes with its stack)
            if outcome is not None:
                await self._record(row, outcome)

    async def _record(self, row: JobRow, outcome: JobOutcome) -> None:
        webhook = row.webhook_url is not None
        try:
            finished = await asyncio.to_thread(
                self._store.finish, row.id, self.worker, outcome, webhook, self._jobs.lease_s
            )
        except CogserveError:
            # The lease lapses and the job runs again elsewhere; its image here just expires.
            log.exception("could not record the end of job %s", row.id)
            return
        if not finished:
            log.info("job %s ended elsewhere (cancelled or taken over); its result here is dropped", row.id)
            return
        self._metrics.job_finished(outcome.status.upper())
        if webhook:
            self._in_background(self._send_webhook(row.id))

    async def _send_webhook(self, job_id: str) -> None:
        """Deliver a finished job's webhook, going on from the attempts already made.

        The job's lease, renewed with the running jobs', covers the delivery: if this process dies,
        another claims it once the lease lapses (``_claim``) and finishes it.
        """
        row = await asyncio.to_thread(self._store.get, job_id)
        if row is None or row.webhook_url is None or row.webhook_state != "pending":
            return

        async def failed(attempts: int) -> None:
            await asyncio.to_thread(self._store.webhook_attempted, job_id, attempts)

        self._delivering.add(job_id)
        try:
            payload = self._render(self._view_of(row))
            state, attempts = await deliver(
                row.webhook_url, payload, self._jobs, job_id, made=row.webhook_attempts, on_failure=failed
            )
            await asyncio.to_thread(self._store.webhook_attempted, job_id, attempts, state)
        finally:
            self._delivering.discard(job_id)

    # -- upkeep: leases, crashed processes' jobs, old rows -------------------------------------

    async def run_upkeep(self) -> None:
        """Renew this process's leases and claim lapsed jobs, every third of a lease; forever."""
        interval = self._jobs.lease_s / 3
        last_prune = 0.0
        while True:
            try:
                await self._renew()
                if self._images.ready:
                    await self._claim()
                if time.monotonic() - last_prune > self._settings.storage.sweep_interval_s:
                    ttl_s = self._settings.storage.image_ttl_days * 86400
                    await asyncio.to_thread(self._store.prune, time.time() - ttl_s)
                    last_prune = time.monotonic()
            except Exception:
                log.exception("job upkeep failed; retrying in %.1f s", interval)
            await asyncio.sleep(interval)

    async def _renew(self) -> None:
        await asyncio.to_thread(
            self._store.renew_deliveries, self.worker, list(self._delivering), self._jobs.lease_s
        )
        progress = {job_id: local.progress for job_id, local in self._local.items()}
        kept = await asyncio.to_thread(self._store.renew, self.worker, progress, self._jobs.lease_s)
        for job_id in progress.keys() - kept:
            local = self._local.get(job_id)
            if local is not None and local.task is not None:
                log.info("job %s was cancelled or taken over; stopping it here", job_id)
                local.task.cancel()

    async def _claim(self) -> None:
        deliveries = await asyncio.to_thread(self._store.claim_deliveries, self.worker, self._jobs.lease_s)
        for row in deliveries:
            log.info("resuming the webhook of job %s after %d attempts", row.id, row.webhook_attempts)
            self._in_background(self._send_webhook(row.id))
        room = self._settings.scheduler.max_queue - self._scheduler.stats.queued
        if room <= 0:
            return
        rows = await asyncio.to_thread(self._store.claim_lapsed, self.worker, self._jobs.lease_s, room)
        for row in rows:
            await self._resume(row)

    async def _resume(self, row: JobRow) -> None:
        """Run a claimed job again, holding a queue place if one is free, or fail it if it has run
        too often. (Places are not reserved before claiming: that would refuse new submissions
        while the claim runs.)"""
        if row.attempts > self._jobs.max_attempts:
            message = f"the server stopped {row.attempts - 1} times while this job ran; not retried again"
            await self._record(row, JobOutcome(status="fail", error_code="1230", error_message=message))
            return
        log.info("resuming job %s (run %d of at most %d)", row.id, row.attempts, self._jobs.max_attempts)
        try:
            place: Reservation | None = self._scheduler.reserve(1)
        except QueueFull:
            place = None  # it asks the queue for room when it gets there
        self._start(row, None, place)

    async def stop(self) -> None:
        """Hand this process's unfinished jobs back for the next process; stop the webhooks."""
        ids, delivering = list(self._local), list(self._delivering)
        tasks = [local.task for local in self._local.values() if local.task is not None]
        for task in [*tasks, *self._background]:
            task.cancel()
        for task in [*tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await asyncio.to_thread(self._store.release, self.worker, ids)
            await asyncio.to_thread(self._store.release_deliveries, self.worker, delivering)
        except CogserveError:
            log.exception("could not hand back %d jobs; they resume when their leases lapse", len(ids))

    # -- helpers -------------------------------------------------------------------------------

    async def _owned(self, job_id: str, key: ApiKey | None) -> JobRow:
        row = await asyncio.to_thread(self._store.get, job_id) if is_job_id(job_id) else None
        # Someone else's job answers exactly like a missing one: ids are not to be probed.
        if row is None or row.key_id != (key.id if key else None):
            raise NotFound(f"no async job {job_id!r}")
        return row

    def _view_of(self, row: JobRow, base_url: str | None = None) -> JobView:
        """``base_url``: the address the caller reached; a webhook uses the submitter's."""
        local = self._local.get(row.id)
        state, progress, position = cast(Status, row.status), row.progress, None
        if local is not None and row.status in ACTIVE:
            progress = local.progress
            position = self._scheduler.queue_position(row.id)
            running = progress > 0 or self._scheduler.is_running(row.id)
            state = "running" if running else "queued"
        return JobView(
            id=row.id,
            request_id=row.request_id,
            model=row.model,
            state=state,
            progress=progress,
            queue_position=position,
            image_url=self._image_url(row, base_url),
            image_id=row.image_id,
            created=row.image_created,
            content_filter=json.loads(row.content_filter) if row.content_filter else [],
            revised_prompt=_revised_prompt(row),
            error_code=row.error_code,
            error_message=row.error_message,
        )

    def _image_url(self, row: JobRow, base_url: str | None) -> str | None:
        if row.image_id is None or row.image_created is None:
            return None
        # The image's own expiry, to the second (the row keeps its creation time in seconds).
        expires_at = row.image_created + self._settings.storage.image_ttl_days * 86400
        base = base_url or json.loads(row.spec)["base_url"]
        return self._images.image_url(row.image_id, expires_at, base)

    def _in_background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _revised_prompt(row: JobRow) -> str | None:
    job = json.loads(row.spec)["job"]
    return None if job.get("revised_from") is None else cast(str, job["params"]["prompt"])


def _job_from(data: dict[str, Any]) -> ImageRequest:
    return ImageRequest(**{**data, "params": GenerationParams(**data["params"])})
