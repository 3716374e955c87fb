"""Model loading and running; knows nothing of HTTP."""

from cogserve.engine.types import (
    BatchItem,
    Engine,
    GenerationOutput,
    GenerationParams,
    ModelInfo,
    ProgressCallback,
    ProgressEvent,
    generate_one,
)
from cogserve.settings import Settings


def create_engine(settings: Settings) -> Engine:
    """Pick the engine implementation for these settings (today: the in-process diffusers one)."""
    from cogserve.engine.runner import PipelineEngine

    return PipelineEngine(settings.model, settings.builtin_model_dir)


__all__ = [
    "BatchItem",
    "Engine",
    "GenerationOutput",
    "GenerationParams",
    "ModelInfo",
    "ProgressCallback",
    "ProgressEvent",
    "create_engine",
    "generate_one",
]
