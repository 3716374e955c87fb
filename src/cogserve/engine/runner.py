"""Runs diffusers' CogView4Pipeline: one call per batch, with per-image seeds, progress and stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cogserve.engine.adapters import ResidentAdapters
from cogserve.engine.loader import ServingHints, load_pipeline, resolve_device
from cogserve.engine.lora import LoraRegistry, linear_shapes
from cogserve.engine.prompt_tokens import MAX_PROMPT_TOKENS, count_prompt_tokens, padded_prompt_embeds
from cogserve.engine.types import BatchItem, GenerationOutput, GenerationParams, ModelInfo, generate_one
from cogserve.errors import ConfigError, GenerationFailed, Interrupted, OutOfMemory
from cogserve.settings import ModelSettings

log = logging.getLogger(__name__)


class PipelineEngine:
    """The diffusers engine: owns one pipeline on one device.

    Calls are serialised (a lock): one pipeline call uses the whole device, and diffusers pipelines
    keep per-call state on ``self``. Deciding what goes into a call is the scheduler's job.
    """

    def __init__(self, settings: ModelSettings, models_dir: Path) -> None:
        self._settings = settings
        self._models_dir = models_dir
        self._pipe: Any = None
        self._info: ModelInfo | None = None
        self._hints = ServingHints()  # how the model folder asks to be served (cogserve.json)
        self._lock = threading.Lock()
        self._adapters: ResidentAdapters | None = None
        self._shapes: dict[str, tuple[int, int]] = {}

    def attach_loras(self, registry: LoraRegistry) -> None:
        with self._lock:
            if self._adapters is not None and self._pipe is not None:
                self._adapters.unload_all(self._pipe.transformer)  # a new app on a shared engine (tests)
            self._adapters = ResidentAdapters(registry)
        if self._pipe is not None:
            registry.bind(self._shapes)

    @property
    def loaded_loras(self) -> list[str]:
        """The adapters resident in the transformer now, least recently used first."""
        return [] if self._adapters is None else self._adapters.loaded

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise ConfigError("the model is not loaded yet")
        return self._info

    def load(self) -> None:
        if self._pipe is not None:
            return  # already loaded: tests and the CLI may share one engine between apps
        device = resolve_device(self._settings.device)
        self._pipe, builtin, self._hints = load_pipeline(self._settings, self._models_dir, device)
        self._info = ModelInfo(
            name=builtin or str(self._settings.path),
            builtin=builtin is not None,
            device=device,
            dtype=str(self._pipe.transformer.dtype).removeprefix("torch."),
        )
        # Taken before any adapter is loaded: PEFT wraps the layers it changes.
        self._shapes = linear_shapes(self._pipe.transformer)
        if self._adapters is not None:
            self._adapters.registry.bind(self._shapes)

    def count_prompt_tokens(self, prompt: str) -> int:
        if self._pipe is None:
            raise ConfigError("the model is not loaded yet")
        return count_prompt_tokens(self._pipe.tokenizer, prompt)

    def warmup(self) -> None:
        for width, height, steps in warmup_buckets(self._settings):
            params = GenerationParams("warm-up", width, height, steps, self._settings.guidance_scale, 0)
            started = time.perf_counter()
            generate_one(self, params)
            log.info("warm-up %dx%d, %d steps: %.2f s", width, height, steps, time.perf_counter() - started)

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        import torch

        if self._pipe is None:
            raise ConfigError("the model is not loaded yet")
        if not items:
            return []
        first = items[0].params
        if any(item.params.batch_key != first.batch_key for item in items):
            raise ValueError("a batch must share width, height, steps, guidance and LoRA adapters")
        if first.loras and self._adapters is None:
            raise GenerationFailed("LoRA adapters were asked for but none are served (no lora dir)")

        def step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if all(item.should_stop() for item in items):
                # Raising stops at once; pipe._interrupt would still run the VAE decode.
                raise Interrupted("every image of this batch was cancelled")
            for item in items:
                if item.on_progress is not None:
                    item.on_progress(step + 1, first.steps)
            return kwargs

        # CPU generators: a seed gives the same starting noise on every device, alone or in a batch.
        generators = [torch.Generator(device="cpu").manual_seed(item.params.seed) for item in items]
        drawn = native_size(first.width, first.height, self._hints.native_pixels)
        latents = None
        if drawn != (first.width, first.height):
            # The pipeline still gets the served width and height (its noise schedule and size
            # conditioning follow them); only the starting noise, and so the picture, is smaller.
            shape = (1, self._pipe.transformer.config.in_channels, drawn[1] // 8, drawn[0] // 8)
            noise = [torch.randn(shape, generator=generator) for generator in generators]
            latents = torch.cat(noise).to(self._pipe.transformer.dtype)
        with self._lock:
            if self._adapters is not None:
                # Every call sets its own adapter set (or none): nothing carries over between calls.
                # Outside inference_mode: loading makes parameters, which must stay normal tensors.
                self._adapters.activate(self._pipe.transformer, first.loras)
            started = time.perf_counter()  # an adapter's load is reported on its own, not as step time
            result = self._run(items, generators, latents, step_end)
        images = [enlarge(image, first.width, first.height) for image in result.images]
        elapsed = time.perf_counter() - started
        return [
            GenerationOutput(image=image, seed=item.params.seed, elapsed_s=elapsed, batch_size=len(items))
            for item, image in zip(items, images, strict=True)
        ]

    def _run(self, items: Sequence[BatchItem], generators: list[Any], latents: Any, step_end: Any) -> Any:
        import torch

        first = items[0].params
        prompts = [item.params.prompt for item in items]
        with torch.inference_mode():
            try:
                return self._pipe(
                    **self._prompt_arguments(prompts),
                    width=first.width,
                    height=first.height,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance_scale,
                    generator=generators,
                    latents=latents,
                    callback_on_step_end=step_end,
                    max_sequence_length=MAX_PROMPT_TOKENS,
                )
            except Interrupted:
                raise
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                raise OutOfMemory(
                    f"out of GPU memory generating {len(items)} image(s) of {first.width}x{first.height}"
                ) from exc
            except Exception as exc:
                raise GenerationFailed(f"image generation failed: {type(exc).__name__}: {exc}") from exc

    def _prompt_arguments(self, prompts: list[str]) -> dict[str, Any]:
        """The prompts as the pipeline takes them: as text, or as text states padded the way the
        model folder asks (``prompt_tokens``), the empty negative prompt padded alike."""
        least = self._hints.prompt_tokens
        if least is None:
            return {"prompt": prompts}
        return {
            "prompt_embeds": padded_prompt_embeds(self._pipe, prompts, least),
            "negative_prompt_embeds": padded_prompt_embeds(self._pipe, [""] * len(prompts), least),
        }


def native_size(width: int, height: int, native_pixels: int | None) -> tuple[int, int]:
    """The size a model that draws at about ``native_pixels`` draws a ``width``x``height`` picture
    at: the same aspect ratio, sides in multiples of 16 (VAE 8x, patches 2x2). Never larger."""
    if native_pixels is None or width * height <= native_pixels:
        return width, height
    scale = (native_pixels / (width * height)) ** 0.5
    return max(16, round(width * scale / 16) * 16), max(16, round(height * scale / 16) * 16)


def enlarge(image: Any, width: int, height: int) -> Any:
    """Bicubic: smooth edges on flat colour areas without Lanczos' ringing halos."""
    from PIL import Image

    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.BICUBIC)


def warmup_buckets(settings: ModelSettings) -> list[tuple[int, int, int]]:
    """The (width, height, steps) buckets named in ``warmup_sizes``."""
    buckets = []
    for entry in settings.warmup_sizes:
        size, _, steps = entry.partition(":")
        width, height = (int(part) for part in size.split("x"))
        buckets.append((width, height, int(steps) if steps else settings.standard_steps))
    return buckets
