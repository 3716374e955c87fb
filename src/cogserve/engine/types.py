"""What the engine takes and gives: plain data, no HTTP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cogserve.engine.prompt_tokens import MAX_PROMPT_TOKENS

if TYPE_CHECKING:
    from PIL.Image import Image

    from cogserve.engine.lora import LoraRegistry

#: Called after each denoising step with (steps done, total steps).
ProgressCallback = Callable[[int, int], None]

#: LoRA adapters of an image: (name, scale) pairs, sorted by name.
Loras = tuple[tuple[str, float], ...]
#: Images that may share one pipeline call: (width, height, steps, guidance_scale, loras).
BatchKey = tuple[int, int, int, float, Loras]


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    #: The adapters and their scales; one pipeline call runs one set, so it is part of the batch key.
    loras: Loras = ()

    def __post_init__(self) -> None:
        # Sorted, so the same set in another order batches together; tuples, because params cross to
        # Ray replicas as a dict (``asdict``) and come back through this constructor.
        object.__setattr__(self, "loras", tuple(sorted((str(n), float(s)) for n, s in self.loras)))

    @property
    def batch_key(self) -> BatchKey:
        return (self.width, self.height, self.steps, self.guidance_scale, self.loras)


@dataclass(frozen=True)
class GenerationOutput:
    image: Image
    seed: int
    #: Wall time of the pipeline call that made this image (shared by a batch).
    elapsed_s: float
    #: How many images that call made.
    batch_size: int = 1


@dataclass(frozen=True)
class ProgressEvent:
    """One denoising step of one request; the scheduler delivers these on the event loop."""

    request_id: str
    step: int
    total: int


@dataclass(frozen=True)
class BatchItem:
    """One image of a pipeline call.

    ``should_stop`` and ``on_progress`` are called from the pipeline's thread, between steps.
    """

    params: GenerationParams
    should_stop: Callable[[], bool] = lambda: False
    on_progress: ProgressCallback | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builtin: bool
    device: str
    dtype: str
    #: The longest prompt the text encoder reads, in its tokens (``engine.prompt_tokens``).
    max_prompt_tokens: int = MAX_PROMPT_TOKENS


class Engine(Protocol):
    """Turns parameters into images. Implementations own the pipeline and its device.

    Calls are blocking; the scheduler runs them on its own worker thread.
    """

    @property
    def info(self) -> ModelInfo: ...

    def load(self) -> None:
        """Load weights (blocking); raises ``ConfigError`` when that is impossible."""

    def attach_loras(self, registry: LoraRegistry) -> None:
        """Serve the adapters of ``registry`` (checked against this model's layers once loaded)."""

    def warmup(self) -> None:
        """Generate each configured warm-up bucket once, so no request pays one-off costs."""

    def count_prompt_tokens(self, prompt: str) -> int:
        """The prompt's length in the loaded model's tokens, as the pipeline counts it (blocking)."""
        ...

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        """One pipeline call for items sharing a ``batch_key``; outputs in the items' order.

        Raises ``Interrupted`` once every item's ``should_stop`` is true, ``OutOfMemory`` when the
        device ran out of memory, and ``GenerationFailed`` for anything else the pipeline raised.
        """
        ...


def generate_one(
    engine: Engine, params: GenerationParams, on_progress: ProgressCallback | None = None
) -> GenerationOutput:
    """A single image, outside any scheduler (the CLI and warm-up)."""
    return engine.generate_batch([BatchItem(params, on_progress=on_progress)])[0]
