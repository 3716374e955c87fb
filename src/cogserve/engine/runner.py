"""Runs diffusers' CogView4Pipeline, one call at a time, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cogserve.engine.builtin import BUILTIN_NAME
from cogserve.engine.loader import load_pipeline, resolve_device
from cogserve.engine.types import GenerationOutput, GenerationParams, ModelInfo, ProgressCallback
from cogserve.errors import ConfigError, GenerationFailed
from cogserve.settings import ModelSettings

log = logging.getLogger(__name__)

WARMUP_PARAMS = GenerationParams(prompt="warm-up", width=512, height=512, steps=2, guidance_scale=3.5, seed=0)


class PipelineEngine:
    """The diffusers engine: owns one pipeline on one device.

    Calls are serialised (a lock): one pipeline call uses the whole device, and diffusers pipelines
    keep per-call state on ``self``. Batching several requests into one call is the scheduler's job.
    """

    def __init__(self, settings: ModelSettings, models_dir: Path) -> None:
        self._settings = settings
        self._models_dir = models_dir
        self._pipe: Any = None
        self._info: ModelInfo | None = None
        self._lock = threading.Lock()
        # One worker thread: async callers queue here instead of filling the default thread pool,
        # and unlike an asyncio.Lock it is bound to no event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cogserve-pipeline")

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise ConfigError("the model is not loaded yet")
        return self._info

    def load(self) -> None:
        if self._pipe is not None:
            return  # already loaded: tests and the CLI may share one engine between apps
        device = resolve_device(self._settings.device)
        self._pipe, builtin = load_pipeline(self._settings, self._models_dir, device)
        self._info = ModelInfo(
            name=BUILTIN_NAME if builtin else str(self._settings.path),
            builtin=builtin,
            device=device,
            dtype=str(self._pipe.transformer.dtype).removeprefix("torch."),
        )

    def warmup(self) -> None:
        started = time.perf_counter()
        self.generate_sync(WARMUP_PARAMS)
        log.info("warm-up generation took %.2f s", time.perf_counter() - started)

    async def generate(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> GenerationOutput:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.generate_sync, params, on_progress)

    def generate_sync(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> GenerationOutput:
        import torch

        if self._pipe is None:
            raise ConfigError("the model is not loaded yet")

        def step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_progress is not None:
                on_progress(step + 1, params.steps)
            return kwargs

        # A CPU generator makes a seed give the same starting noise on every device.
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            try:
                result = self._pipe(
                    prompt=params.prompt,
                    width=params.width,
                    height=params.height,
                    num_inference_steps=params.steps,
                    guidance_scale=params.guidance_scale,
                    generator=generator,
                    callback_on_step_end=step_end,
                )
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                raise GenerationFailed(
                    f"out of GPU memory generating {params.width}x{params.height}; try a smaller size"
                ) from exc
            except Exception as exc:
                raise GenerationFailed(f"image generation failed: {type(exc).__name__}: {exc}") from exc
        return GenerationOutput(
            image=result.images[0], seed=params.seed, elapsed_s=time.perf_counter() - started
        )
