"""What an image request means: admit -> moderate -> generate -> mark -> store file and row -> describe.

``ImageService.generate`` is the one entry point of a synchronous request (BigModel's route asks for
one image, OpenAI's for ``n``); async jobs (``service.jobs``) use ``admission`` when submitted and
``produce`` when they run, because their admission outlives the HTTP request that made them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from cogserve.auth import ApiKey
from cogserve.engine import Engine, GenerationParams
from cogserve.engine.lora import LoraRegistry
from cogserve.engine.prompt_tokens import check_prompt_tokens
from cogserve.engine.scheduler import ImageScheduler, ProgressListener, Reservation
from cogserve.errors import (
    AdapterForbidden,
    ContentBlocked,
    InvalidField,
    NotFound,
    PromptTooLong,
    ServiceUnavailable,
    StorageError,
    UnknownAdapter,
)
from cogserve.metrics import Metrics
from cogserve.safety import ImageChecker, Policy, Watermarker, create_image_checker, encode_png, load_policy
from cogserve.safety.credentials import Credentials, CredentialSigner, read_credentials, signer_from_settings
from cogserve.service.access import AccessControl, AuditNote
from cogserve.service.enhancer import Enhancement, PromptEnhancer
from cogserve.settings import Settings
from cogserve.storage import ImageObject, ImageRow, ImageStore, MetadataStore, is_image_id, new_image_id
from cogserve.storage.sweep import SweepReport, sweep

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

Quality = Literal["standard", "hd"]
ResponseFormat = Literal["url", "b64_json"]


@dataclass(frozen=True)
class ImageRequest:
    """One image asked for, validated, in service terms (an OpenAI call for n images makes n)."""

    request_id: str
    model: str
    quality: Quality
    response_format: ResponseFormat
    params: GenerationParams
    user_id: str | None = None
    # Sent by the SDKs; recorded with the image, not acted on.
    user: str | None = None
    style: str | None = None
    sensitive_word_check: Any = None
    watermark_enabled: bool | None = None
    #: The client's choice (None: the operator's mode decides).
    enhance_prompt: bool | None = None
    #: The prompt as sent, when ``params.prompt`` is the enhancer's rewrite of it.
    revised_from: str | None = None


@dataclass(frozen=True)
class StoredImage:
    image_id: str
    created: int
    png: bytes
    seed: int
    content_filter: list[dict[str, Any]] = field(default_factory=list)
    expires_at: float = 0.0
    #: The prompt the image was made from, when the enhancer rewrote the one sent.
    revised_prompt: str | None = None
    #: What became of the request's enhancement, when one was wanted.
    enhancement: Enhancement | None = None


@dataclass(frozen=True)
class Safety:
    """The checks and marks every image passes through, built from settings by the app factory."""

    policy: Policy
    image_checker: ImageChecker | None
    watermarker: Watermarker
    #: Signs the Content Credentials manifest, the last change to a marked image's bytes (None: off).
    signer: CredentialSigner | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Safety:
        safety, credentials = settings.safety, settings.credentials
        return cls(
            policy=load_policy(safety.moderation_policy),
            image_checker=create_image_checker(safety.image_checker),
            watermarker=Watermarker(
                label_text=safety.watermark_text,
                font_path=safety.watermark_font,
                server_name=safety.server_name,
            ),
            signer=signer_from_settings(
                credentials.enabled,
                credentials.cert_chain,
                credentials.private_key,
                credentials.timestamp_url,
                settings.dev_credentials_dir,
                server_name=safety.server_name,
            ),
        )


class ImageService:
    def __init__(
        self,
        settings: Settings,
        scheduler: ImageScheduler,
        files: ImageStore,
        metadata: MetadataStore,
        access: AccessControl,
        safety: Safety,
        metrics: Metrics | None = None,
        engine: Engine | None = None,
        loras: LoraRegistry | None = None,
    ) -> None:
        self._settings = settings
        #: The LoRA adapters served (None: started without a LoRA folder).
        self.loras = loras
        self._prefetching: set[asyncio.Future[None]] = set()  # held, so the tasks are not collected
        # Counts prompts in the served model's tokens; None (tests of the service alone) skips that.
        self._engine = engine
        self._metrics = metrics or Metrics()
        self._scheduler = scheduler
        self._access = access
        self._policy = safety.policy
        self._image_checker = safety.image_checker
        self._watermarker = safety.watermarker
        self._signer = safety.signer
        self._files = files
        self._metadata = metadata
        self.enhancer = PromptEnhancer(settings.enhancer, self._metrics, settings.model.max_prompt_chars)
        self.ready = False
        self.load_error: str | None = None

    async def generate(
        self, requests: Sequence[ImageRequest], key: ApiKey | None, note: AuditNote
    ) -> list[StoredImage]:
        """Check, generate, mark and store the images of one request; the stored images, in order.

        In order: model ready -> prompt within the model's tokens -> watermark choice allowed ->
        user not blocked -> within limits -> prompt moderation -> prompt enhancement, if wanted, and
        moderation of the rewrite -> scheduler -> image moderation -> watermarks -> file, then row.
        The images of one request are admitted once (one request against the key's and user's
        limits) and submitted together, so they share a batch. Cancelling the caller's task cancels
        it: queued work never starts, running work stops or is discarded, and nothing stays stored.
        """
        first = requests[0]
        async with self.admission(first, key, len(requests)) as (watermark, places):
            # The n images of a request share a prompt: it is enhanced once.
            enhanced, enhancement = await self.enhanced(first, note)
            if enhanced is not first:
                requests = [
                    replace(
                        request,
                        params=replace(request.params, prompt=enhanced.params.prompt),
                        revised_from=enhanced.revised_from,
                    )
                    for request in requests
                ]
            # The audit row has room for one image id: the first image's.
            tasks = [
                asyncio.ensure_future(
                    self.produce(request, watermark, note if i == 0 else AuditNote(), reservation=places)
                )
                for i, request in enumerate(requests)
            ]
            try:
                stored = await asyncio.gather(*tasks)
            except BaseException:
                # gather leaves the siblings of a failed image running: stop them rather than spend
                # the GPU on images nobody will receive (finished ones stay stored until they expire).
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks)
                raise
        return [replace(image, enhancement=enhancement) for image in stored]

    async def enhanced(
        self, request: ImageRequest, note: AuditNote
    ) -> tuple[ImageRequest, Enhancement | None]:
        """The request with its prompt rewritten, if enhancement is wanted and works; and what
        became of the enhancement (None when not wanted).

        The prompt as sent is moderated first, so a refused prompt never reaches the enhancer;
        ``produce`` moderates the rewrite. An enhancement that fails leaves the request as it was.
        """
        prompt = request.params.prompt
        if not self.enhancer.wanted(prompt, request.enhance_prompt):
            return request, None
        await self.moderate(prompt, request.user_id, "input", note)
        enhancement = await self.enhancer.enhance(prompt)
        if enhancement.revised is None:
            return request, enhancement
        try:  # a rewrite past the model's tokens would be cut silently: use the prompt as sent
            await self.check_prompt_tokens(enhancement.revised)
        except PromptTooLong as exc:
            return request, self.enhancer.fell_back("too_long", str(exc))
        params = replace(request.params, prompt=enhancement.revised)
        return replace(request, params=params, revised_from=prompt), enhancement

    async def review(
        self, prompt: str, key: ApiKey | None, user_id: str | None, note: AuditNote
    ) -> Enhancement:
        """The enhancer's rewrite of a prompt, without generating, for a client to review and edit.

        Within the key's and user's limits like a generation (each call may cost the operator an
        enhancer call). Both the prompt and its rewrite are moderated (ContentBlocked, 1301); an
        enhancer that fails is a fallback in the answer. Needs no model, so works while it loads.
        """
        async with self._access.admitted(key, user_id):
            await self.moderate(prompt, user_id, "input", note)
            enhancement = await self.enhancer.enhance(prompt)
            if enhancement.revised is not None:
                await self.moderate(enhancement.revised, user_id, "rewrite", note)
            return enhancement

    async def moderate(
        self, prompt: str, user_id: str | None, stage: Literal["input", "rewrite"], note: AuditNote
    ) -> int:
        """The prompt's moderation level, also noted for the audit row (the most severe of a
        request's prompts); ContentBlocked (1301) when it is refused.

        ``stage`` is ``input`` (a prompt as sent) or ``rewrite`` (the enhancer's rewrite of one).
        """
        # Off the loop: a long adversarial prompt can take tens of milliseconds to match.
        verdict = await asyncio.to_thread(self._policy.check, prompt)
        if note.moderation_level is None or verdict.level < note.moderation_level:
            note.moderation_level = verdict.level
        if verdict.blocked(self._settings.safety.block_level):
            log.warning(
                "%s refused (level %d, %s) for user_id %s",
                "prompt" if stage == "input" else "enhanced prompt",
                verdict.level,
                ", ".join(sorted({hit.category for hit in verdict.hits})),
                user_id,
            )
            self._metrics.moderation_block(stage)
            raise ContentBlocked("input" if stage == "input" else "enhanced prompt")
        return verdict.level

    @asynccontextmanager
    async def admission(
        self, request: ImageRequest, key: ApiKey | None, images: int = 1
    ) -> AsyncIterator[tuple[bool, Reservation]]:
        """Refuse at once if the model is not ready, the prompt is longer than the model reads, the
        watermark choice is not allowed, the user is blocked, a limit is reached or the queue has no
        room for ``images`` more; otherwise hold the request's place within its key's and user's
        limits and in the queue until the block ends. Yields whether its images get watermarks, and
        the queue places for ``produce``."""
        self.check_ready()
        await self.check_loras(request, key)
        await self.check_prompt_tokens(request.params.prompt)
        watermark = self._watermark_wanted(request, key)
        async with self._access.admitted(key, request.user_id):
            places = self._scheduler.reserve(images)
            try:
                yield watermark, places
            finally:
                places.release()

    def lora_names(self) -> list[str]:
        """The adapters served now (a rescan of the folder)."""
        return [] if self.loras is None else self.loras.names()

    async def check_loras(self, request: ImageRequest, key: ApiKey | None) -> None:
        """UnknownAdapter for an adapter not served, AdapterForbidden for one the key may not use."""
        wanted = [name for name, _ in request.params.loras]
        if not wanted:
            return
        if self.loras is None:
            raise UnknownAdapter("this server serves no LoRA adapters (it was started without a LoRA folder)")
        # Off the loop: a rescan stats the folder and reads the headers of new or changed adapters.
        names = await asyncio.to_thread(self.lora_names)
        for name in wanted:
            if name not in names:
                raise UnknownAdapter(
                    f"LoRA adapter '{name}' does not exist; available: {', '.join(names) or 'none'}"
                )
        if key is not None and key.loras is not None:
            for name in wanted:
                if name not in key.loras:
                    raise AdapterForbidden(
                        f"this API key may not use LoRA adapter '{name}'; it may use: "
                        f"{', '.join(key.loras) or 'none'}"
                    )
        for name in wanted:
            self._metrics.lora_request(name)
        if self.loras.bound and not self.loras.resident.issuperset(wanted):
            # Read from disk now, on a thread, while the request waits its turn; not awaited.
            task = asyncio.ensure_future(asyncio.to_thread(self.loras.prefetch, wanted))
            self._prefetching.add(task)
            task.add_done_callback(self._prefetching.discard)

    def check_ready(self) -> None:
        if not self.ready:
            raise ServiceUnavailable(
                self.load_error or "the model is still loading; retry shortly",
                headers={"Retry-After": "5"},
            )

    async def check_prompt_tokens(self, prompt: str) -> None:
        """Raise ``PromptTooLong`` when the model's tokenizer makes more tokens of ``prompt`` than its
        text encoder reads: the pipeline would silently drop the rest."""
        if self._engine is None:
            return
        # Off the loop: a 4,000-character prompt takes a real tokenizer about a millisecond.
        count = await asyncio.to_thread(self._engine.count_prompt_tokens, prompt)
        check_prompt_tokens(count, self._engine.info.max_prompt_tokens)

    async def check_database(self) -> None:
        """Raise ``StorageUnavailable`` when the metadata database does not answer (for /readyz)."""
        await asyncio.to_thread(self._metadata.ping)

    async def produce(
        self,
        request: ImageRequest,
        watermark: bool,
        note: AuditNote | None = None,
        on_progress: ProgressListener | None = None,
        *,
        schedule_id: str | None = None,
        timeout_s: float | None = None,
        reservation: Reservation | None = None,
    ) -> StoredImage:
        """Moderate, generate, mark and store one image of an admitted request (see ``admission``).

        ``schedule_id`` names the work in the scheduler (``Scheduler.queue_position``); it defaults
        to the request id. ``timeout_s`` overrides the scheduler's request timeout. ``reservation``:
        the admission's queue places (a job resumed by another process has none, and needs room).
        """
        note = note or AuditNote()
        stage: Literal["input", "rewrite"] = "input" if request.revised_from is None else "rewrite"
        level = await self.moderate(request.params.prompt, request.user_id, stage, note)
        if request.revised_from is not None:
            # content_filter reports the more severe of the prompt as sent and its rewrite.
            level = min(level, await self.moderate(request.revised_from, request.user_id, "input", note))
        created = time.time()
        output = await self._scheduler.submit(
            request.params,
            schedule_id or request.request_id,
            on_progress,
            timeout_s=timeout_s,
            reservation=reservation,
        )
        image_id = new_image_id()
        png, image_level = await asyncio.to_thread(self._finish, output.image, image_id, watermark, request)
        content_filter = [{"role": "user", "level": level}]
        if image_level is not None:
            content_filter.append({"role": "assistant", "level": image_level})
        expires_at = created + self._settings.storage.image_ttl_days * 86400
        row = _row_for(request, image_id, created, expires_at, output.elapsed_s, watermark)
        writing = asyncio.ensure_future(asyncio.to_thread(self._store, image_id, png, row))
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            # The caller left mid-write: let the write finish, then take the image back.
            loop = asyncio.get_running_loop()
            writing.add_done_callback(lambda _: loop.run_in_executor(None, self._discard, image_id))
            raise
        note.image_id = image_id
        self._metrics.image_generated()
        return StoredImage(
            image_id=image_id,
            created=int(created),
            png=png,
            seed=output.seed,
            content_filter=content_filter,
            expires_at=expires_at,
            revised_prompt=None if request.revised_from is None else request.params.prompt,
        )

    def _watermark_wanted(self, request: ImageRequest, key: ApiKey | None) -> bool:
        """Whether the image gets marked; raises InvalidField when this key may not opt out."""
        if request.watermark_enabled is not False:
            return True  # the cloud API's default: marked unless asked otherwise
        if key is None or key.allow_no_watermark:
            return False  # open mode is the operator's own machine
        raise InvalidField(
            "watermark_enabled",
            "this API key may not turn watermarks off; an operator can create one that may "
            "(cogserve keys create --allow-no-watermark)",
        )

    def _finish(
        self, image: Image, image_id: str, watermark: bool, request: ImageRequest
    ) -> tuple[bytes, int | None]:
        """Image moderation, then the marks, then PNG bytes, then the signed manifest; runs off the
        event loop. Nothing may change the bytes after signing: the manifest hashes them all."""
        image_level = None
        if self._image_checker is not None:
            image_verdict = self._image_checker.check(image)
            image_level = image_verdict.level
            if image_level <= self._settings.safety.block_level:
                log.warning("generated image refused (level %d, %s)", image_level, image_verdict.labels)
                self._metrics.moderation_block("output")
                raise ContentBlocked("generated image")
        if not watermark:
            return encode_png(image), image_level
        marked = self._watermarker.apply(image, image_id)
        png = encode_png(marked, self._watermarker.metadata(image_id))
        if self._signer is not None:
            options = self._settings.credentials
            png = self._signer.sign(
                png,
                image_id,
                request.model,
                prompt=request.params.prompt if options.include_prompt else None,
                user_id=request.user_id if options.include_user_id else None,
            )
        return png, image_level

    def _store(self, image_id: str, png: bytes, row: ImageRow) -> None:
        # Image first, then the row: a row never points at a missing image (an unreachable store
        # fails here, before any row exists). If the row fails, the image goes too; if that fails
        # or the process dies in between, the sweep removes the orphan (storage.sweep).
        self._files.write(image_id, png)
        try:
            self._metadata.add(row)
        except StorageError:
            try:
                self._files.delete(image_id)
            except StorageError:
                log.warning("could not delete image %s after its row failed; the sweep will", image_id)
            raise

    def _discard(self, image_id: str) -> None:
        # Row first: if that fails, the pair stays whole and the expiry sweep takes both later.
        try:
            self._metadata.delete([image_id])
            self._files.delete(image_id)
        except Exception:
            log.exception("could not discard image %s of a cancelled request", image_id)

    async def image_file(self, image_id: str) -> tuple[ImageObject, float]:
        """A live image, opened for sending, and its expiry; NotFound for unknown, malformed or
        expired ids. A remote image's ``chunks`` hold its body open: consume or close them."""
        if not is_image_id(image_id):
            raise NotFound("image not found")
        row = await asyncio.to_thread(self._metadata.get, image_id)
        if row is None or row.expires_at <= time.time():
            raise NotFound("image not found or expired")
        opened = await asyncio.to_thread(self._files.open, image_id)
        if opened is None:
            raise NotFound("image not found")
        return opened, row.expires_at

    async def credentials(self, image_id: str) -> Credentials | None:
        """The Content Credentials of a live image as c2pa reads and validates them (None: it has
        none); NotFound as ``image_file``. No trust anchors: the answer says what any reader would."""
        opened, _ = await self.image_file(image_id)
        data = await asyncio.to_thread(_read_all, opened)
        return await asyncio.to_thread(read_credentials, data)

    def image_url(self, image_id: str, expires_at: float, base_url: str) -> str:
        """The link a response gives for a stored image.

        With ``presigned_urls`` on an S3 store: a presigned GET URL of the object that lives as long
        as the image does (at most 7 days, SigV4's limit). Otherwise ``{base_url}/files/{id}.png``.
        Signing is local computation (no request to the store), cheap enough for the event loop.
        """
        remaining = int(expires_at - time.time())
        if self._settings.storage.presigned_urls and remaining > 0:
            try:
                url = self._files.presigned_url(image_id, remaining)
            except StorageError:
                log.warning("could not presign image %s; linking /files instead", image_id, exc_info=True)
                url = None
            if url is not None:
                return url
        return f"{base_url}/files/{image_id}.png"

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


def _read_all(opened: ImageObject) -> bytes:
    if opened.path is not None:
        try:
            return opened.path.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read image {opened.path.name}") from exc
    assert opened.chunks is not None
    return b"".join(opened.chunks)


def _row_for(
    request: ImageRequest, image_id: str, created: float, expires_at: float, elapsed: float, watermark: bool
) -> ImageRow:
    params = request.params
    check = None
    if request.sensitive_word_check is not None:
        check = json.dumps(request.sensitive_word_check, ensure_ascii=False)
    return ImageRow(
        id=image_id,
        created_at=created,
        expires_at=expires_at,
        model=request.model,
        prompt=params.prompt,
        width=params.width,
        height=params.height,
        quality=request.quality,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        seed=params.seed,
        user_id=request.user_id,
        request_id=request.request_id,
        duration_s=elapsed,
        response_format=request.response_format,
        user=request.user,
        style=request.style,
        sensitive_word_check=check,
        watermark_enabled=watermark,
    )
