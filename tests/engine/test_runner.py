"""The diffusers engine: seeds, progress, and the errors of loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cogserve.engine import Engine, GenerationParams, generate_one
from cogserve.engine.loader import locate_model, preflight, resolve_device, resolve_dtype
from cogserve.errors import ConfigError
from cogserve.settings import ModelSettings

PARAMS = GenerationParams(
    prompt="一只可爱的小猫咪", width=512, height=512, steps=3, guidance_scale=3.5, seed=7
)


def test_progress_is_reported_once_per_step(shared_engine: Engine) -> None:
    seen: list[tuple[int, int]] = []
    generate_one(shared_engine, PARAMS, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.slow  # four generations of 3 steps: 13-23 s measured on 2 busy cores
def test_seed_determines_the_pixels(shared_engine: Engine) -> None:
    def run(seed: int) -> np.ndarray:
        params = GenerationParams(**{**PARAMS.__dict__, "seed": seed})
        return np.asarray(generate_one(shared_engine, params).image)

    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_output_has_the_requested_orientation(shared_engine: Engine) -> None:
    params = GenerationParams(**{**PARAMS.__dict__, "width": 768, "height": 512, "steps": 1})
    assert generate_one(shared_engine, params).image.size == (768, 512)


def test_info_describes_the_builtin_model(shared_engine: Engine) -> None:
    info = shared_engine.info
    assert info.builtin and info.device == "cpu" and info.dtype == "float32"


def test_dtype_defaults_bf16_on_cuda_fp32_on_cpu() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("fp32", "cuda") == torch.float32


def test_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model_index\.json"):
        locate_model(ModelSettings(path=str(tmp_path)), tmp_path)


def test_uncached_repo_id_is_refused_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        preflight(ModelSettings(path="zai-org/CogView4-6B"))


def test_nonsense_path_is_refused() -> None:
    with pytest.raises(ConfigError, match="neither"):
        preflight(ModelSettings(path="/no/such/folder/anywhere"))


def test_a_real_model_folder_loads_from_its_path(models_dir: Path) -> None:
    from cogserve.engine.builtin import BUILTIN_NAME
    from cogserve.engine.runner import PipelineEngine

    engine = PipelineEngine(ModelSettings(path=str(models_dir / BUILTIN_NAME)), models_dir)
    engine.load()
    assert not engine.info.builtin
    assert generate_one(engine, PARAMS).image.size == (512, 512)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
