"""The batching scheduler between the service and the engine.

- Admission is bounded: more than ``max_queue`` waiting requests -> ``QueueFull`` at once. A
  request admitted before it is queued (moderation first; an async job's task) holds its place
  with ``reserve``, taken in the same step as the check, so concurrent admissions cannot all pass
  the check and then overfill the queue.
- The oldest waiting request always goes next (no batch key starves); requests sharing its
  ``batch_key`` ride along, up to ``max_batch_size``, each with its own seed.
- A request waits up to ``max_batch_wait_ms`` for company, but only while other requests are in
  flight: a lone client never waits for company that is not coming.
- Deadlines and cancellation share one path: the waiter gives up (timeout, or its task is
  cancelled because the client left), marks its item cancelled, and the item is skipped if still
  queued, or its image discarded if running; a call whose images are all cancelled stops at the
  next step.
- A batch that fails (out of memory, or the pipeline raised) is re-run one image at a time, so
  one bad image or one too many for the device fails only its own request, never its batch-mates.

All state lives on the event loop; only ``Engine.generate_batch`` runs on the worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from cogserve.engine.types import BatchItem, Engine, GenerationOutput, GenerationParams, ProgressEvent
from cogserve.errors import (
    CogserveError,
    GenerationFailed,
    Interrupted,
    QueueFull,
    RequestTimeout,
    ServiceUnavailable,
)
from cogserve.settings import SchedulerSettings

log = logging.getLogger(__name__)

ProgressListener = Callable[[ProgressEvent], None]


@dataclass(eq=False)
class _Request:
    params: GenerationParams
    request_id: str
    deadline: float
    enqueued: float
    future: asyncio.Future[GenerationOutput]
    on_progress: ProgressListener | None = None
    # Written on the loop, read by the worker thread between steps; a bool store is atomic.
    cancelled: bool = False
    started: bool = False
    waited_s: float = 0.0


@dataclass(frozen=True)
class SchedulerStats:
    queued: int
    running: int
    batches: int
    batched_images: int
    #: Ray only: images each model replica made, with its process id (``{name: {images, pid}}``).
    replicas: dict[str, dict[str, int]] | None = None


@dataclass(frozen=True)
class BatchReport:
    """One finished pipeline call, for metrics."""

    size: int
    steps: int
    elapsed_s: float
    #: How long each image of the batch waited in the queue before the call began.
    waited_s: tuple[float, ...]


@dataclass
class _Counters:
    batches: int = 0
    batched_images: int = 0


class Reservation:
    """Places held in a scheduler's queue (``reserve``): each ``submit`` given it takes one; what
    is left is given back by ``release`` (idempotent)."""

    def __init__(self, count: int, give_back: Callable[[int], None]) -> None:
        self.held = count
        self._give_back = give_back

    def take(self) -> bool:
        """Turn one held place into a queue entry; False if none is left."""
        if self.held == 0:
            return False
        self.release(1)
        return True

    def release(self, count: int | None = None) -> None:
        count = self.held if count is None else count
        self.held -= count
        self._give_back(count)


class HeldPlaces:
    """Places promised to admitted requests that are not queued yet, counted against the room both
    schedulers have: ``reserve`` checks the room (``check_room`` raises QueueFull) and takes the
    places in one step, with no await between, so concurrent admissions cannot all pass."""

    def __init__(self, check_room: Callable[[int], None]) -> None:
        self.count = 0
        self._check_room = check_room

    def reserve(self, count: int) -> Reservation:
        self._check_room(count)
        self.count += count
        return Reservation(count, self._give_back)

    def _give_back(self, count: int) -> None:
        self.count -= count


class ImageScheduler(Protocol):
    """What the service needs of a scheduler: this module's ``Scheduler`` in one process, or
    ``cogserve.scaleout.remote.RemoteScheduler`` in front of model replicas on Ray."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def stats(self) -> SchedulerStats: ...

    async def submit(
        self,
        params: GenerationParams,
        request_id: str,
        on_progress: ProgressListener | None = None,
        *,
        timeout_s: float | None = None,
        reservation: Reservation | None = None,
    ) -> GenerationOutput: ...

    def reserve(self, count: int) -> Reservation: ...

    def queue_position(self, request_id: str) -> int | None: ...

    def is_running(self, request_id: str) -> bool: ...


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        settings: SchedulerSettings,
        *,
        device: str,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        """``device`` picks the batch size when the settings leave it unset (see ``batch_size_for``);
        ``on_batch`` hears of every finished pipeline call."""
        self._engine = engine
        self._on_batch = on_batch
        self._settings = settings
        self._max_batch = batch_size_for(settings, device)
        self._queue: list[_Request] = []
        self._held = HeldPlaces(self._check_room)
        self._running: list[_Request] = []
        self._wakeup = asyncio.Event()
        self._listeners: list[ProgressListener] = []
        self._task: asyncio.Task[None] | None = None
        self._counters = _Counters()
        # Most requests in flight at once since the last dispatch: > 1 means waiting can pay off.
        self._peak_in_flight = 0
        # Moving average of a pipeline call's wall time, for Retry-After.
        self._call_s = 1.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cogserve-pipeline")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch_forever())

    async def stop(self) -> None:
        """Refuse what is still queued and stop dispatching; a running call finishes on its own."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for request in self._queue:
            _settle(request, ServiceUnavailable("the server is shutting down; retry shortly"))
        self._queue.clear()
        self._executor.shutdown(wait=False)

    def subscribe(self, listener: ProgressListener) -> None:
        """Hear every request's progress events (metrics, async jobs)."""
        self._listeners.append(listener)

    @property
    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            queued=len(self._queue),
            running=len(self._running),
            batches=self._counters.batches,
            batched_images=self._counters.batched_images,
        )

    # -- submitting --------------------------------------------------------------------------

    async def submit(
        self,
        params: GenerationParams,
        request_id: str,
        on_progress: ProgressListener | None = None,
        *,
        timeout_s: float | None = None,
        reservation: Reservation | None = None,
    ) -> GenerationOutput:
        """Queue one image and wait for it; raises QueueFull, RequestTimeout or the engine's error.

        ``timeout_s`` overrides ``request_timeout_s`` (async jobs have their own); a place from
        ``reservation`` is used if one is left, else the queue must have room. Cancelling the
        awaiting task (a client that left) cancels the work too.
        """
        if self._task is None:
            raise ServiceUnavailable("the scheduler is not running")
        if reservation is None or not reservation.take():
            self._check_room(1)
        now = time.monotonic()
        timeout = timeout_s if timeout_s is not None else self._settings.request_timeout_s
        request = _Request(
            params=params,
            request_id=request_id,
            deadline=now + timeout,
            enqueued=now,
            future=asyncio.get_running_loop().create_future(),
            on_progress=on_progress,
        )
        self._queue.append(request)
        self._peak_in_flight = max(self._peak_in_flight, len(self._queue) + len(self._running))
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout)
        except TimeoutError:
            self._cancel(request)
            where = "running" if request.started else "queued"
            raise RequestTimeout(
                f"the image was not ready within {timeout:g} s (request_timeout_s; it was {where})"
            ) from None
        except asyncio.CancelledError:
            self._cancel(request)
            raise

    def reserve(self, count: int) -> Reservation:
        """Hold ``count`` places in the queue, or raise QueueFull; checked and taken in one step."""
        return self._held.reserve(count)

    def _check_room(self, count: int) -> None:
        if len(self._queue) + self._held.count + count > self._settings.max_queue:
            raise QueueFull(
                f"the queue is full ({self._settings.max_queue} requests waiting); retry shortly",
                headers={"Retry-After": str(self._retry_after_s())},
            )

    def queue_position(self, request_id: str) -> int | None:
        """1 for the next request to start, 2 for the one after...; None if not waiting."""
        for position, request in enumerate(self._queue, start=1):
            if request.request_id == request_id:
                return position
        return None

    def is_running(self, request_id: str) -> bool:
        return any(request.request_id == request_id for request in self._running)

    def _cancel(self, request: _Request) -> None:
        request.cancelled = True
        if request in self._queue:
            self._queue.remove(request)
        request.future.cancel()

    def _retry_after_s(self) -> int:
        # A rough, honest hint: how long the queue ahead takes at the recent pace of pipeline calls.
        calls_ahead = -(-len(self._queue) // self._max_batch)
        return max(1, min(60, math.ceil(calls_ahead * self._call_s)))

    # -- dispatching -------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._run(batch)
            except Exception:  # a bug here must not stop every later request
                log.exception("scheduler failed running a batch")
                for request in batch:
                    _settle(request, CogserveError("internal error in the scheduler"))

    async def _next_batch(self) -> list[_Request]:
        while True:
            self._drop_expired()
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = self._queue[0]
            batch = self._companions(head)
            wait_until = head.enqueued + self._settings.max_batch_wait_ms / 1000
            if len(batch) < self._max_batch and self._peak_in_flight > 1:
                while len(batch) < self._max_batch and time.monotonic() < wait_until:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), wait_until - time.monotonic())
                    if head.cancelled:
                        break
                    batch = self._companions(head)
                if head.cancelled:
                    continue
            now = time.monotonic()
            for request in batch:
                self._queue.remove(request)
                request.started = True
                request.waited_s = now - request.enqueued
            self._peak_in_flight = len(self._queue) + len(batch)
            return batch

    def _companions(self, head: _Request) -> list[_Request]:
        """The head and the next requests of its batch key, in arrival order."""
        key = head.params.batch_key
        same = [r for r in self._queue if r.params.batch_key == key and not r.cancelled]
        return same[: self._max_batch]

    def _drop_expired(self) -> None:
        # Waiters time themselves out; this only catches requests whose waiter never got to run.
        now = time.monotonic()
        for request in [r for r in self._queue if r.cancelled or r.deadline <= now]:
            self._queue.remove(request)

    async def _run(self, batch: list[_Request]) -> None:
        self._running = batch
        try:
            try:
                outputs = await self._call(batch)
            except GenerationFailed as exc:  # OutOfMemory included
                if len(batch) == 1:
                    raise
                log.warning("%s; re-running its %d images one at a time", exc.message, len(batch))
                for request in batch:
                    if request.cancelled:
                        continue
                    self._running = [request]
                    try:
                        (output,) = await self._call([request])
                    except CogserveError as single_exc:
                        _settle(request, single_exc)
                    else:
                        _settle(request, output)
                return
        except Interrupted:
            return  # every waiter already left
        except Exception as exc:  # fails this batch's requests only; the next batch runs as usual
            if isinstance(exc, CogserveError):
                log.error("batch of %d failed: %s", len(batch), exc.message)
            for request in batch:
                _settle(request, exc)
            return
        finally:
            self._running = []
        self._counters.batches += 1
        self._counters.batched_images += len(batch)
        self._call_s = 0.8 * self._call_s + 0.2 * outputs[0].elapsed_s
        if self._on_batch is not None:
            report = BatchReport(
                size=len(batch),
                steps=batch[0].params.steps,
                elapsed_s=outputs[0].elapsed_s,
                waited_s=tuple(request.waited_s for request in batch),
            )
            try:
                self._on_batch(report)
            except Exception:  # metrics must never fail a batch
                log.exception("on_batch listener failed")
        for request, output in zip(batch, outputs, strict=True):
            _settle(request, output)

    async def _call(self, batch: list[_Request]) -> list[GenerationOutput]:
        loop = asyncio.get_running_loop()
        items = [self._engine_item(loop, request) for request in batch]
        return await loop.run_in_executor(self._executor, self._engine.generate_batch, items)

    def _engine_item(self, loop: asyncio.AbstractEventLoop, request: _Request) -> BatchItem:
        def should_stop() -> bool:
            return request.cancelled

        def relay(step: int, total: int) -> None:
            loop.call_soon_threadsafe(self._emit, ProgressEvent(request.request_id, step, total), request)

        return BatchItem(params=request.params, should_stop=should_stop, on_progress=relay)

    def _emit(self, event: ProgressEvent, request: _Request) -> None:
        if request.cancelled:
            return
        for listener in [*self._listeners, *([request.on_progress] if request.on_progress else [])]:
            try:
                listener(event)
            except Exception:  # a listener's bug must not break generation
                log.exception("progress listener failed")


def batch_size_for(settings: SchedulerSettings, device: str) -> int:
    """The configured batch size, else 4 on an accelerator and 1 on a CPU.

    On a CPU one image already keeps the cores busy: a batch of 4 tiny-model images took 1.09-1.18x
    the time of the same 4 one by one (benchmarks/concurrency.py), so batching there only costs.
    """
    if settings.max_batch_size is not None:
        return settings.max_batch_size
    return 1 if device == "cpu" else 4


def _settle(request: _Request, outcome: GenerationOutput | BaseException) -> None:
    if request.future.done():
        return  # the waiter left (timeout or cancel); its image is discarded
    if isinstance(outcome, BaseException):
        request.future.set_exception(outcome)
    else:
        request.future.set_result(outcome)
