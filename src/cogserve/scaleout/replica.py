"""One model replica on Ray: the engine and its own batching scheduler, answering a stream.

``generate`` yields plain dicts, so nothing but builtins and a numpy array crosses processes:
``{"kind": "queued", "position"}`` whenever the request's place in this replica's queue changes
(checked every ``POSITION_POLL_S``), ``{"kind": "progress", "step", "total"}`` per denoising step,
then either
``{"kind": "done", "pixels", "seed", "elapsed_s", "batch_size", "replica"}`` or
``{"kind": "error", "type", "message", "headers"}`` (cogserve's errors, rebuilt by the ingress).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from cogserve.engine import GenerationParams, ProgressEvent, create_engine
from cogserve.engine.loader import resolve_device
from cogserve.engine.lora import LoraRegistry
from cogserve.engine.scheduler import Scheduler
from cogserve.errors import CogserveError
from cogserve.settings import Settings

log = logging.getLogger(__name__)

#: How often a waiting request's queue position is looked at (a dict lookup: cheap).
POSITION_POLL_S = 0.25


class ModelReplica:
    def __init__(self, settings: Settings) -> None:
        # Load and warm before returning: Ray sends no traffic to a replica still in __init__.
        self._engine = create_engine(settings)
        # Each replica serves the adapters of the (shared) LoRA folder itself, checked against its model.
        loras = LoraRegistry.from_settings(settings)
        if loras is not None:
            self._engine.attach_loras(loras)
        self._engine.load()
        if settings.model.warmup:
            self._engine.warmup()
        self._scheduler = Scheduler(
            self._engine, settings.scheduler, device=resolve_device(settings.model.device)
        )
        self._name = _replica_name()
        self._images = 0

    def info(self) -> dict[str, Any]:
        info = self._engine.info
        return {
            "name": info.name,
            "builtin": info.builtin,
            "device": info.device,
            "dtype": info.dtype,
            "max_prompt_tokens": info.max_prompt_tokens,
            "replica": self._name,
            "pid": os.getpid(),
            "images": self._images,
            "queued": self._scheduler.stats.queued,
        }

    def count_prompt_tokens(self, prompt: str) -> int:
        return self._engine.count_prompt_tokens(prompt)

    async def generate(
        self, params: dict[str, Any], request_id: str, timeout_s: float | None
    ) -> AsyncIterator[dict[str, Any]]:
        self._scheduler.start()  # idempotent; needs the replica's running loop
        events: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        work = asyncio.ensure_future(
            self._scheduler.submit(
                GenerationParams(**params), request_id, events.put_nowait, timeout_s=timeout_s
            )
        )
        await asyncio.sleep(0)  # let the submission reach the queue, so it has a position
        position: int | None = None
        try:
            while not work.done():
                now = self._scheduler.queue_position(request_id)
                if now is not None and now != position:
                    position = now
                    yield {"kind": "queued", "position": now}
                waiting = asyncio.ensure_future(events.get())
                await asyncio.wait(
                    {work, waiting}, timeout=POSITION_POLL_S, return_when=asyncio.FIRST_COMPLETED
                )
                if waiting.done():
                    yield _progress(waiting.result())
                else:
                    waiting.cancel()
            while not events.empty():
                yield _progress(events.get_nowait())
            try:
                output = work.result()
            except CogserveError as exc:
                yield {
                    "kind": "error",
                    "type": type(exc).__name__,
                    "message": exc.message,
                    "headers": exc.headers,
                }
                return
            self._images += 1
            yield {
                "kind": "done",
                "pixels": np.asarray(output.image),
                "seed": output.seed,
                "elapsed_s": output.elapsed_s,
                "batch_size": output.batch_size,
                "replica": self._name,
                "pid": os.getpid(),
            }
        finally:
            # The ingress went away (client left, deadline): Ray cancels this generator, and the
            # scheduler's own cancel path drops or stops the work.
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, CogserveError):
                    await work


def _progress(event: ProgressEvent) -> dict[str, Any]:
    return {"kind": "progress", "step": event.step, "total": event.total}


def _replica_name() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_tag)
    except Exception:  # outside Ray (tests call the class directly)
        return f"pid-{os.getpid()}"
