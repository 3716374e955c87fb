"""The ingress's side of the model replicas: a scheduler and an engine that live on Ray.

Ray's handle picks a replica per call by power of two choices on queue length, which is how load
spreads by queue depth. A replica that dies mid-call (killed, node lost) raises an actor error
here; the image is then asked of another replica, from scratch and with the same seed, so the
client sees the same image a little later. Work that had not started loses nothing; work that was
running is re-run (at most ``_ATTEMPTS`` calls in all, within the request's deadline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from PIL import Image

from cogserve import errors
from cogserve.engine import BatchItem, GenerationOutput, GenerationParams, ModelInfo, ProgressEvent
from cogserve.engine.scheduler import BatchReport, HeldPlaces, ProgressListener, Reservation, SchedulerStats
from cogserve.errors import CogserveError, GenerationFailed, QueueFull, ServiceUnavailable
from cogserve.settings import Settings

log = logging.getLogger(__name__)

_ATTEMPTS = 3


class RemoteScheduler:
    """``ImageScheduler`` in front of the ``ModelReplica`` deployment (each with its own batching)."""

    def __init__(self, handle: Any, settings: Settings, replicas: int, on_batch: Any = None) -> None:
        self._handle = handle.options(stream=True)
        self._timeout_s = settings.scheduler.request_timeout_s
        # The replicas queue and batch; this bounds what the ingress keeps waiting on them.
        self._capacity = replicas * (settings.scheduler.max_queue + (settings.scheduler.max_batch_size or 4))
        self._waiting: set[str] = set()
        # Place in the queue of the replica that holds the request, as that replica last reported it.
        self._positions: dict[str, int] = {}
        self._running: set[str] = set()
        self._held = HeldPlaces(self._check_room)  # admitted requests not yet sent
        self._done = 0
        self._replicas: dict[str, dict[str, int]] = {}
        self._on_batch = on_batch

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass  # in-flight calls are cancelled with their requests

    @property
    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            queued=len(self._waiting),
            running=len(self._running),
            batches=self._done,
            batched_images=self._done,
            replicas={name: dict(seen) for name, seen in self._replicas.items()},
        )

    def reserve(self, count: int) -> Reservation:
        """Hold ``count`` places among those in flight, or raise QueueFull (one step, on the loop)."""
        return self._held.reserve(count)

    def _check_room(self, count: int) -> None:
        if len(self._waiting) + len(self._running) + self._held.count + count > self._capacity:
            raise QueueFull(
                f"all model replicas are full ({self._capacity} requests in flight); retry shortly",
                headers={"Retry-After": "5"},
            )

    def queue_position(self, request_id: str) -> int | None:
        """The place in its replica's queue (each replica orders its own; there is no global one)."""
        return self._positions.get(request_id) if request_id in self._waiting else None

    def is_running(self, request_id: str) -> bool:
        return request_id in self._running

    async def submit(
        self,
        params: GenerationParams,
        request_id: str,
        on_progress: ProgressListener | None = None,
        *,
        timeout_s: float | None = None,
        reservation: Reservation | None = None,
    ) -> GenerationOutput:
        if reservation is None or not reservation.take():
            self._check_room(1)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self._timeout_s)
        self._waiting.add(request_id)
        try:
            for attempt in range(1, _ATTEMPTS + 1):
                remaining = deadline - time.monotonic()
                try:
                    return await self._call(params, request_id, on_progress, remaining)
                except _ReplicaLost as lost:
                    if attempt == _ATTEMPTS or remaining <= 0:
                        raise ServiceUnavailable(
                            f"model replicas kept failing ({lost}); retry shortly",
                            headers={"Retry-After": "10"},
                        ) from lost
                    log.warning(
                        "request %s: %s; asking another replica (try %d)", request_id, lost, attempt + 1
                    )
                    self._running.discard(request_id)
                    self._positions.pop(request_id, None)
                    self._waiting.add(request_id)
            raise AssertionError("unreachable")
        finally:
            self._waiting.discard(request_id)
            self._positions.pop(request_id, None)
            self._running.discard(request_id)

    async def _call(
        self,
        params: GenerationParams,
        request_id: str,
        on_progress: ProgressListener | None,
        remaining: float,
    ) -> GenerationOutput:
        from ray.exceptions import ActorUnavailableError, RayActorError

        stream = self._handle.generate.remote(asdict(params), request_id, remaining)
        try:
            async for item in stream:
                if item["kind"] == "queued":
                    self._positions[request_id] = item["position"]
                elif item["kind"] == "progress":
                    self._waiting.discard(request_id)
                    self._running.add(request_id)
                    if on_progress is not None:
                        on_progress(ProgressEvent(request_id, item["step"], item["total"]))
                elif item["kind"] == "error":
                    raise _rebuilt(item)
                else:
                    return self._finished(item)
        except asyncio.CancelledError:
            stream.cancel()  # Ray cancels the replica's generator, which cancels the work
            raise
        except (RayActorError, ActorUnavailableError) as exc:
            raise _ReplicaLost(f"the replica died: {type(exc).__name__}") from exc
        raise _ReplicaLost("the replica's stream ended without an image")

    def _finished(self, item: dict[str, Any]) -> GenerationOutput:
        self._done += 1
        seen = self._replicas.setdefault(item["replica"], {"images": 0, "pid": item["pid"]})
        seen["images"] += 1
        if self._on_batch is not None:
            # Seen from here one image at a time; the batch size is the replica's call's.
            self._on_batch(BatchReport(item["batch_size"], 0, item["elapsed_s"], ()))
        return GenerationOutput(
            image=Image.fromarray(item["pixels"]),
            seed=item["seed"],
            elapsed_s=item["elapsed_s"],
            batch_size=item["batch_size"],
        )


class _ReplicaLost(Exception):
    pass


def _rebuilt(item: dict[str, Any]) -> CogserveError:
    """The replica's error as the same class here (only scheduler and engine errors travel)."""
    cls = getattr(errors, str(item["type"]), None)
    if not (isinstance(cls, type) and issubclass(cls, CogserveError)) or cls is errors.LimitExceeded:
        return GenerationFailed(str(item["message"]))
    try:
        return cls(str(item["message"]), headers=dict(item["headers"]))
    except TypeError:  # an error class with a different constructor
        return GenerationFailed(str(item["message"]))


class RemoteEngine:
    """Stands for the replicas where the app expects an engine: ready once a replica answers."""

    def __init__(self, handle: Any, wait_s: float = 600.0) -> None:
        self._handle = handle
        self._wait_s = wait_s
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        return self._info or ModelInfo(name="(replicas starting)", builtin=False, device="ray", dtype="-")

    def load(self) -> None:
        # Blocking (the app calls it in a thread): the first replica answers once loaded and warm.
        deadline = time.monotonic() + self._wait_s
        while True:
            try:
                info = self._handle.info.remote().result(timeout_s=30)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"no model replica became ready: {exc}") from exc
                time.sleep(1)
        self._info = ModelInfo(
            name=info["name"],
            builtin=info["builtin"],
            device=f"ray:{info['device']}",
            dtype=info["dtype"],
            max_prompt_tokens=info["max_prompt_tokens"],
        )

    def warmup(self) -> None:
        pass  # each replica warms itself before Ray routes to it

    def count_prompt_tokens(self, prompt: str) -> int:
        # The tokenizer lives with the model, on a replica; the ingress asks before queueing.
        return int(self._handle.count_prompt_tokens.remote(prompt).result(timeout_s=30))

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        raise GenerationFailed("images are generated by the Ray replicas, not by the ingress")
