"""GPU tier: the same engine on CUDA in bf16. Skipped where there is no CUDA device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cogserve.engine import GenerationParams, generate_one
from cogserve.engine.runner import PipelineEngine
from cogserve.settings import ModelSettings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_builtin_model_runs_in_bf16_on_cuda(models_dir: Path) -> None:
    engine = PipelineEngine(ModelSettings(device="cuda"), models_dir)
    engine.load()
    assert engine.info.device == "cuda" and engine.info.dtype == "bfloat16"
    params = GenerationParams(prompt="a cat", width=1024, height=1024, steps=4, guidance_scale=3.5, seed=3)
    first, again = generate_one(engine, params), generate_one(engine, params)
    assert first.image.size == (1024, 1024)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
