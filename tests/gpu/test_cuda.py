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


PARAMS = GenerationParams(prompt="a cat", width=512, height=512, steps=4, guidance_scale=3.5, seed=3)


def _image(models_dir: Path, **modes: object) -> np.ndarray:
    engine = PipelineEngine(ModelSettings(device="cuda", **modes), models_dir)  # type: ignore[arg-type]
    engine.load()
    engine.warmup()
    return np.asarray(generate_one(engine, PARAMS).image).astype(np.int16)


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_cpu_offload_gives_the_same_image(models_dir: Path, offload: str) -> None:
    assert np.abs(_image(models_dir, offload=offload) - _image(models_dir)).max() <= 2


def test_nf4_text_encoder_loads_and_draws(models_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    assert _image(models_dir, text_encoder_quant="nf4").shape == (512, 512, 3)


def test_compiled_transformer_on_cuda_matches_eager(models_dir: Path) -> None:
    # bf16 kernels chosen by inductor may round differently: allow a few levels.
    assert np.abs(_image(models_dir, compile=True) - _image(models_dir)).max() <= 8
