"""What the engine takes and gives: plain data, no HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image

#: Called after each denoising step with (steps done, total steps).
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int


@dataclass(frozen=True)
class GenerationOutput:
    image: Image
    seed: int
    elapsed_s: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builtin: bool
    device: str
    dtype: str


class Engine(Protocol):
    """Turns parameters into an image. Implementations own the pipeline and its device."""

    @property
    def info(self) -> ModelInfo: ...

    def load(self) -> None:
        """Load weights (blocking); raises ``ConfigError`` when that is impossible."""

    def warmup(self) -> None:
        """Run one small generation so the first request pays no one-off costs."""

    async def generate(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> GenerationOutput: ...

    def generate_sync(
        self, params: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> GenerationOutput: ...
