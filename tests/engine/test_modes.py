"""Memory and speed modes on the tiny pipeline (CPU), and the clear refusals of impossible ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cogserve.engine import GenerationParams, generate_one
from cogserve.engine.modes import check_modes
from cogserve.engine.runner import PipelineEngine
from cogserve.errors import ConfigError
from cogserve.service.sizes import check_warmup_sizes
from cogserve.settings import ModelSettings

PARAMS = GenerationParams("a paper crane on a desk", 512, 512, 4, 3.5, 11)


def engine_with(models_dir: Path, **modes: Any) -> PipelineEngine:
    engine = PipelineEngine(ModelSettings(builtin_dir=models_dir, builtin="tiny-random", **modes), models_dir)
    engine.load()
    return engine


def image(engine: PipelineEngine, params: GenerationParams = PARAMS) -> np.ndarray:
    return np.asarray(generate_one(engine, params).image).astype(np.int16)


@pytest.fixture(scope="module")
def baseline(models_dir: Path) -> np.ndarray:
    return image(engine_with(models_dir))


@pytest.mark.parametrize(
    ("modes", "message"),
    [
        ({"offload": "model"}, "Use --offload none on a CPU"),
        ({"offload": "sequential"}, "Use --offload none on a CPU"),
        ({"text_encoder_quant": "nf4"}, "needs CUDA"),
    ],
)
def test_cuda_only_modes_are_refused_on_cpu(modes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_modes(ModelSettings(**modes), "cpu")


def test_missing_packages_and_compilers_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'cogserve\[quant\]'"):
        check_modes(ModelSettings(text_encoder_quant="int8"), "cpu")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        check_modes(ModelSettings(compile=True), "cpu")


def test_mode_settings_are_validated() -> None:
    assert ModelSettings(step_cache="fbc:0.12").fbc_threshold == pytest.approx(0.12)
    assert ModelSettings(warmup_sizes="1024x1024:20, 512x512").warmup_sizes == ["1024x1024:20", "512x512"]
    for bad in ("fbc:0", "fbc:1.2", "teacache:0.1", "fbc:"):
        with pytest.raises(ValueError, match="step_cache"):
            ModelSettings(step_cache=bad)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        ModelSettings(warmup_sizes=["big"])
    with pytest.raises(ConfigError, match="2048"):
        check_warmup_sizes(["4096x512:2"])


def test_vae_tiling_decodes_large_images_in_tiles(models_dir: Path) -> None:
    engine = engine_with(models_dir, vae_tiling=True)
    assert engine._pipe.vae.use_tiling
    params = GenerationParams("a wide harbour", 1344, 768, 2, 3.5, 3)
    assert generate_one(engine, params).image.size == (1344, 768)


def test_int8_text_encoder_shrinks_its_weights_and_still_draws(
    models_dir: Path, baseline: np.ndarray
) -> None:
    pytest.importorskip("torchao")
    engine = engine_with(models_dir, text_encoder_quant="int8")
    linear = next(m for m in engine._pipe.text_encoder.modules() if type(m).__name__ == "Linear")
    assert (
        "float" not in type(linear.weight).__name__.lower()
        and linear.weight.__class__.__name__ != "Parameter"
    )
    quantised = image(engine)
    assert quantised.shape == baseline.shape
    # Weight-only int8 moves the prompt embedding a little; the picture stays close, not identical.
    assert np.abs(quantised - baseline).mean() < 8


def test_first_block_cache_changes_work_done_and_none_is_exact(
    models_dir: Path, baseline: np.ndarray
) -> None:
    assert np.array_equal(image(engine_with(models_dir, step_cache="none")), baseline)
    cached = engine_with(models_dir, step_cache="fbc:0.9")
    params = GenerationParams(PARAMS.prompt, 512, 512, 12, 3.5, 11)
    calls = 0
    # The cache hooks wrap each block's forward; count what runs inside the second block.
    attention = cached._pipe.transformer.transformer_blocks[1].attn1

    def counting(module: Any, args: Any) -> None:
        nonlocal calls
        calls += 1

    attention.register_forward_pre_hook(counting)
    generate_one(cached, params)
    # Without the cache the second block runs on every step, twice with guidance: 24 times.
    assert 0 < calls < 24


@pytest.mark.slow
def test_compiled_transformer_matches_eager(models_dir: Path, baseline: np.ndarray) -> None:
    engine = engine_with(models_dir, compile=True)
    engine.warmup()  # pays the compile
    assert np.abs(image(engine) - baseline).max() <= 2
