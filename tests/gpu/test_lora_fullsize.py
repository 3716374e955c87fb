"""GPU tier: a rank-128 LoRA in CogKit's recipe on the full-size CogView4-6B transformer (28 layers,
32 heads x 128; random bf16 weights built from its config, no download). Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cogserve.engine.adapters import ResidentAdapters
from cogserve.engine.builtin import FULL, TINY, Architecture, build_transformer
from cogserve.engine.lora import LoraRegistry, linear_shapes
from cogserve.engine.lora_make import random_adapter

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def transformer_of(arch: Architecture, device: str, dtype: torch.dtype) -> Any:
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build_transformer(arch)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def forward(model: Any, arch: Architecture, device: str, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 32, 32, generator=generator).to(device, dtype)
    text = torch.randn(1, 16, arch.text_hidden, generator=generator).to(device, dtype)
    size = torch.tensor([[256, 256]], device=device, dtype=dtype)
    with torch.inference_mode():
        return model(
            hidden_states=latents,
            encoder_hidden_states=text,
            timestep=torch.tensor([500.0], device=device),
            original_size=size,
            target_size=size,
            crop_coords=torch.zeros_like(size),
            return_dict=False,
        )[0].float()


def check_rank_128_adapter(arch: Architecture, device: str, dtype: torch.dtype, tmp_path: Path) -> None:
    model = transformer_of(arch, device, dtype)
    shapes = linear_shapes(model)
    random_adapter(shapes, tmp_path / "cogkit", rank=128, alpha=64, std=0.02)
    registry = LoraRegistry(tmp_path)
    registry.bind(shapes)
    info = registry.get("cogkit")
    assert info is not None, registry.refused()
    assert (info.rank, info.alpha, len(info.modules)) == (128, 64.0, 4 * arch.layers)
    resident = ResidentAdapters(registry)
    base = forward(model, arch, device, dtype)
    resident.activate(model, [("cogkit", 1.0)])
    adapted = forward(model, arch, device, dtype)
    assert (adapted - base).abs().max() > 0
    resident.activate(model, [])
    assert torch.equal(forward(model, arch, device, dtype), base)  # unfused: the base weights untouched


def test_rank_128_cogkit_adapter_on_the_full_size_transformer(tmp_path: Path) -> None:
    check_rank_128_adapter(FULL, "cuda", torch.bfloat16, tmp_path)


@pytest.mark.parametrize("arch", [TINY], ids=["tiny"])
def test_the_same_check_on_the_tiny_architecture(arch: Architecture, tmp_path: Path) -> None:
    check_rank_128_adapter(arch, "cuda", torch.bfloat16, tmp_path)
