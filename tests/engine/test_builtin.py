"""The built-in tiny model: deterministic, complete, and loaded like a real one."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from cogserve.engine.builtin import BUILTIN_NAME, build_tokenizer, ensure_builtin_model


def weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(folder)): load_file(p) for p in sorted(folder.glob("*/*.safetensors"))}


def test_two_fresh_builds_have_identical_weights_and_tokenizer(tmp_path: Path) -> None:
    first = ensure_builtin_model(tmp_path / "a")
    second = ensure_builtin_model(tmp_path / "b")
    a, b = weights(first), weights(second)
    assert set(a) == {
        "text_encoder/model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    for component in a:
        assert a[component].keys() == b[component].keys()
        for name, tensor in a[component].items():
            assert torch.equal(tensor, b[component][name]), f"{component}:{name} differs"
    assert (first / "tokenizer" / "tokenizer.json").read_bytes() == (
        second / "tokenizer" / "tokenizer.json"
    ).read_bytes()


def test_the_build_is_the_real_cogview4_layout(models_dir: Path) -> None:
    folder = models_dir / BUILTIN_NAME
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "CogView4Pipeline"
    assert index["transformer"] == ["diffusers", "CogView4Transformer2DModel"]
    assert index["text_encoder"] == ["transformers", "GlmModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["use_dynamic_shifting"] is True
    assert (scheduler["base_shift"], scheduler["max_shift"]) == (0.25, 0.75)
    assert scheduler["time_shift_type"] == "linear"
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["latent_channels"] == 16 and len(vae["block_out_channels"]) == 4


def test_an_existing_build_is_reused_not_rebuilt(models_dir: Path) -> None:
    folder = ensure_builtin_model(models_dir)
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert ensure_builtin_model(models_dir) == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".")]  # no staging left


def test_tokenizer_is_glm_style_and_encodes_any_text() -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer("一只可爱的小猫咪 🐱 a cat").input_ids
    assert ids[:2] == [tokenizer.convert_tokens_to_ids("[gMASK]"), tokenizer.convert_tokens_to_ids("<sop>")]
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "一只可爱的小猫咪 🐱 a cat"
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.padding_side == "left"
