"""Model loading and running; knows nothing of HTTP."""

from cogserve.engine.types import Engine, GenerationOutput, GenerationParams, ModelInfo, ProgressCallback
from cogserve.settings import Settings


def create_engine(settings: Settings) -> Engine:
    """Pick the engine implementation for these settings (today: the in-process diffusers one)."""
    from cogserve.engine.runner import PipelineEngine

    return PipelineEngine(settings.model, settings.builtin_model_dir)


__all__ = [
    "Engine",
    "GenerationOutput",
    "GenerationParams",
    "ModelInfo",
    "ProgressCallback",
    "create_engine",
]
