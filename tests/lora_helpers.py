"""LoRA adapters for the tests, made with peft on the tiny model (CogKit's recipe and layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cogserve.engine import GenerationParams, generate_one
from cogserve.engine.builtin import BUILTIN_NAME
from cogserve.engine.lora_make import load_transformer, make_adapter
from cogserve.engine.types import Engine, Loras

#: Strong enough that an adapter moves pixels far more than batching does (<= 2 levels of 255).
STRENGTH = 0.5
#: Batched and alone may differ by float reordering: at most this many levels of 255 per channel.
TOLERANCE = 2


def tiny_model(models_dir: Path) -> Path:
    return models_dir / BUILTIN_NAME


def make(models_dir: Path, out: Path, *, seed: int, rank: int = 4, layout: str = "peft") -> Path:
    """A PEFT LoRA (r=rank, alpha=rank/2, to_q/to_k/to_v/to_out.0) with non-zero B weights."""
    transformer = load_transformer(tiny_model(models_dir))
    return make_adapter(transformer, out, rank=rank, seed=seed, std=STRENGTH, layout=layout)  # type: ignore[arg-type]


def draw(engine: Engine, loras: Loras = (), seed: int = 5, prompt: str = "a cat") -> np.ndarray:
    params = GenerationParams(prompt, 256, 256, 2, 3.5, seed, loras)
    return np.asarray(generate_one(engine, params).image).astype(np.int16)


def differ(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())
