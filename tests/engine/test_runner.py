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


def test_native_size_keeps_the_aspect_ratio_in_multiples_of_16() -> None:
    from cogserve.engine.runner import native_size

    assert native_size(512, 512, 192 * 192) == (192, 192)
    width, height = native_size(1344, 768, 192 * 192)
    assert (width % 16, height % 16) == (0, 0)
    assert abs(width / height - 1344 / 768) < 0.15
    assert native_size(512, 512, None) == (512, 512)  # no hint: drawn at the size asked for
    assert native_size(128, 128, 192 * 192) == (128, 128)  # never drawn larger than asked


def _model_with_hint(models_dir: Path, tmp_path: Path, hint: str) -> Path:
    import shutil

    from cogserve.engine.builtin import BUILTIN_NAME

    folder = tmp_path / "model"
    shutil.copytree(models_dir / BUILTIN_NAME, folder)
    (folder / "cogserve.json").write_text(hint, encoding="utf-8")
    return folder


def test_a_model_with_native_pixels_draws_small_and_answers_the_size_asked(
    models_dir: Path, tmp_path: Path
) -> None:
    from cogserve.engine.runner import PipelineEngine

    folder = _model_with_hint(models_dir, tmp_path, '{"native_pixels": 4096}')
    engine = PipelineEngine(ModelSettings(path=str(folder)), models_dir)
    engine.load()
    drawn: list[tuple[int, ...]] = []
    call = engine._pipe.__call__
    engine._pipe.__class__ = type(
        "Spy",
        (engine._pipe.__class__,),
        {"__call__": lambda self, **kw: drawn.append(tuple(kw["latents"].shape)) or call(**kw)},
    )
    first = generate_one(engine, PARAMS).image
    assert first.size == (512, 512)
    assert drawn == [(1, 16, 8, 8)]  # 64x64 pixels: 8x8 latents, the served size only told
    again = generate_one(engine, PARAMS).image
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_a_model_with_prompt_tokens_reads_prompts_padded_to_them(models_dir: Path, tmp_path: Path) -> None:
    from cogserve.engine.runner import PipelineEngine

    folder = _model_with_hint(models_dir, tmp_path, '{"prompt_tokens": 40}')
    engine = PipelineEngine(ModelSettings(path=str(folder)), models_dir)
    engine.load()
    encoder, pad_id = engine._pipe.text_encoder, engine._pipe.tokenizer.pad_token_id
    seen: list[torch.Tensor] = []
    hook = encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    long_prompt = "a red circle on a blue background, " * 12
    try:
        generate_one(engine, PARAMS)
        generate_one(engine, GenerationParams(**{**PARAMS.__dict__, "prompt": long_prompt}))
    finally:
        hook.remove()
    short, empty, long, empty_again = seen  # each call: its prompt, then the empty negative prompt
    own = engine._pipe.tokenizer(PARAMS.prompt).input_ids
    # 40 tokens at least, then a multiple of 16: the pads on the left, the prompt's own ids after
    assert short.shape == empty.shape == empty_again.shape == (1, 48)
    assert short[0, -len(own) :].tolist() == own and set(short[0, : -len(own)].tolist()) == {pad_id}
    assert long.shape[1] % 16 == 0 and long.shape[1] >= engine.count_prompt_tokens(long_prompt) > 48


def test_padding_below_a_prompts_own_length_changes_nothing(models_dir: Path, tmp_path: Path) -> None:
    """The engine's own encoding is the pipeline's, where the minimum adds no padding."""
    from cogserve.engine.prompt_tokens import padded_prompt_embeds
    from cogserve.engine.runner import PipelineEngine

    engine = PipelineEngine(ModelSettings(path=str(_model_with_hint(models_dir, tmp_path, "{}"))), models_dir)
    engine.load()
    prompts = ["a red circle on a blue background", "一只可爱的小猫咪"]
    with torch.inference_mode():
        theirs, _ = engine._pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
        ours = padded_prompt_embeds(engine._pipe, prompts, 1)
        padded = padded_prompt_embeds(engine._pipe, prompts, 40)
    assert torch.equal(ours, theirs)
    assert padded.shape[1] == 48 and not torch.allclose(padded[:, -ours.shape[1] :], ours)


@pytest.mark.parametrize(
    "hint",
    [
        '{"native_pixels": "big"}',
        '{"native_pixels": 10}',
        "not json",
        '{"prompt_tokens": 0}',
        '{"prompt_tokens": 2000}',
        '{"prompt_tokens": true}',
    ],
)
def test_a_bad_serving_file_is_a_clear_error(models_dir: Path, tmp_path: Path, hint: str) -> None:
    from cogserve.engine.runner import PipelineEngine

    folder = _model_with_hint(models_dir, tmp_path, hint)
    with pytest.raises(ConfigError, match=r"cogserve\.json"):
        PipelineEngine(ModelSettings(path=str(folder)), models_dir).load()
