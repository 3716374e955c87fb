"""What an image request means: generate -> encode -> store file and row together -> describe it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cogserve.engine import GenerationParams
from cogserve.engine.scheduler import ProgressListener, Scheduler
from cogserve.errors import NotFound, ServiceUnavailable, StorageError
from cogserve.settings import Settings
from cogserve.storage import ImageRow, LocalImageStore, MetadataStore, is_image_id, new_image_id
from cogserve.storage.sweep import SweepReport, sweep

log = logging.getLogger(__name__)

Quality = Literal["standard", "hd"]
ResponseFormat = Literal["url", "b64_json"]


@dataclass(frozen=True)
class ImageJob:
    """One validated image request, in service terms."""

    request_id: str
    model: str
    quality: Quality
    response_format: ResponseFormat
    params: GenerationParams
    user_id: str | None = None
    # Sent by the SDKs; recorded with the image, not acted on yet.
    user: str | None = None
    style: str | None = None
    sensitive_word_check: Any = None
    watermark_enabled: bool | None = None


@dataclass(frozen=True)
class StoredImage:
    image_id: str
    created: int
    png: bytes
    seed: int
    content_filter: list[dict[str, Any]] = field(default_factory=list)


class ImageService:
    def __init__(
        self, settings: Settings, scheduler: Scheduler, files: LocalImageStore, metadata: MetadataStore
    ) -> None:
        self._settings = settings
        self._scheduler = scheduler
        self._files = files
        self._metadata = metadata
        self.ready = False
        self.load_error: str | None = None

    async def generate(self, job: ImageJob, on_progress: ProgressListener | None = None) -> StoredImage:
        """Generate and store one image. Cancelling the caller's task cancels it: queued work never
        starts, running work stops or is discarded, and nothing stays stored."""
        if not self.ready:
            raise ServiceUnavailable(
                self.load_error or "the model is still loading; retry shortly",
                headers={"Retry-After": "5"},
            )
        created = time.time()
        output = await self._scheduler.submit(job.params, job.request_id, on_progress)
        png = await asyncio.to_thread(encode_png, output.image)
        image_id = new_image_id()
        expires_at = created + self._settings.storage.image_ttl_days * 86400
        row = _row_for(job, image_id, created, expires_at, output.elapsed_s)
        writing = asyncio.ensure_future(asyncio.to_thread(self._store, image_id, png, row))
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            # The caller left mid-write: let the write finish, then take the image back.
            loop = asyncio.get_running_loop()
            writing.add_done_callback(lambda _: loop.run_in_executor(None, self._discard, image_id))
            raise
        return StoredImage(
            image_id=image_id,
            created=int(created),
            png=png,
            seed=output.seed,
            content_filter=[{"role": "user", "level": 3}],
        )

    def _store(self, image_id: str, png: bytes, row: ImageRow) -> None:
        # File first, then the row: a row never points at a missing file. If the row fails, the
        # file goes too; if the process dies in between, the sweep removes the orphan file.
        self._files.write(image_id, png)
        try:
            self._metadata.add(row)
        except StorageError:
            self._files.delete(image_id)
            raise

    def _discard(self, image_id: str) -> None:
        # Row first: if that fails, the pair stays whole and the expiry sweep takes both later.
        try:
            self._metadata.delete([image_id])
            self._files.delete(image_id)
        except Exception:
            log.exception("could not discard image %s of a cancelled request", image_id)

    async def image_file(self, image_id: str) -> tuple[Path, float]:
        """Path and expiry of a live image; NotFound for unknown, malformed or expired ids."""
        if not is_image_id(image_id):
            raise NotFound("image not found")
        row = await asyncio.to_thread(self._metadata.get, image_id)
        if row is None or row.expires_at <= time.time():
            raise NotFound("image not found or expired")
        path = self._files.path_for(image_id)
        if not path.is_file():
            raise NotFound("image not found")
        return path, row.expires_at

    def sweep(self, now: float | None = None) -> SweepReport:
        return sweep(self._files, self._metadata, now)

    async def run_sweeper(self) -> None:
        """Sweep forever, every ``sweep_interval_s``; errors are logged, never fatal."""
        while True:
            try:
                report = await asyncio.to_thread(self.sweep)
                if report:
                    log.info("sweep: %s", report)
            except Exception:
                log.exception("sweep failed; retrying in %.0f s", self._settings.storage.sweep_interval_s)
            await asyncio.sleep(self._settings.storage.sweep_interval_s)


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _row_for(job: ImageJob, image_id: str, created: float, expires_at: float, elapsed: float) -> ImageRow:
    params = job.params
    check = None
    if job.sensitive_word_check is not None:
        check = json.dumps(job.sensitive_word_check, ensure_ascii=False)
    return ImageRow(
        id=image_id,
        created_at=created,
        expires_at=expires_at,
        model=job.model,
        prompt=params.prompt,
        width=params.width,
        height=params.height,
        quality=job.quality,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        seed=params.seed,
        user_id=job.user_id,
        request_id=job.request_id,
        duration_s=elapsed,
        response_format=job.response_format,
        user=job.user,
        style=job.style,
        sensitive_word_check=check,
        watermark_enabled=job.watermark_enabled,
    )
