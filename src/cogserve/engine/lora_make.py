"""Make a LoRA adapter with random weights for a served model (to try the feature on any model, and
for the tests and benchmarks), and save injected LoRA layers, trained or made, in CogKit's layout.
Uses ``peft`` the way CogKit does.

It changes the pictures (its B matrices are not zero, unlike a fresh training run's) but has learned
nothing: expect a different picture, not a style.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from cogserve.engine.lora import DIFFUSERS_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS, LinearShapes

#: CogKit's LoRA recipe for CogView4: attention projections only, alpha = rank / 2.
COGKIT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def make_adapter(
    transformer: Any,
    out: Path,
    *,
    rank: int = 8,
    alpha: int | None = None,
    targets: Sequence[str] = COGKIT_TARGETS,
    seed: int = 0,
    std: float = 0.05,
    layout: Literal["peft", "diffusers"] = "peft",
) -> Path:
    """Write a random adapter for ``transformer``'s architecture to ``out`` (a folder) and return it.

    ``transformer`` is changed (PEFT layers are injected): pass a copy that is not serving.
    ``layout``: peft (``adapter_model.safetensors`` + ``adapter_config.json``, CogKit's) or
    diffusers (``pytorch_lora_weights.safetensors``).
    """
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else max(1, rank // 2), target_modules=list(targets)
    )
    model = inject_adapter_in_model(config, transformer)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if ".lora_A." in name or ".lora_B." in name:
                noise = torch.randn(parameter.shape, generator=generator) * std
                parameter.copy_(noise.to(parameter.dtype))
    return save_adapter(model, config, out, layout)


def save_adapter(model: Any, config: Any, out: Path, layout: Literal["peft", "diffusers"] = "peft") -> Path:
    """Write the LoRA layers injected in ``model`` (with their peft ``LoraConfig``) to the folder
    ``out``: peft's layout (CogKit's) or diffusers'. Used for made adapters and trained ones alike."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    peft_state = get_peft_model_state_dict(model)
    state = {key: value.detach().float().contiguous() for key, value in peft_state.items()}
    out.mkdir(parents=True, exist_ok=True)
    if layout == "peft":
        # peft's own key prefix, as PeftModel.save_pretrained writes it.
        save_file({f"base_model.model.{key}": value for key, value in state.items()}, str(out / PEFT_WEIGHTS))
        saved = config.to_dict()
        saved["target_modules"] = sorted(saved["target_modules"])
        (out / PEFT_CONFIG).write_text(json.dumps(saved, indent=2, default=str))
    else:
        metadata = {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": config.lora_alpha})}
        prefixed = {f"transformer.{key}": value for key, value in state.items()}
        save_file(prefixed, str(out / DIFFUSERS_WEIGHTS), metadata)
    return out


def load_transformer(model_path: Path, dtype: Any = None) -> Any:
    """The transformer of a diffusers CogView4 folder, on the CPU, to make adapters for."""
    from diffusers import CogView4Transformer2DModel

    return CogView4Transformer2DModel.from_pretrained(model_path, subfolder="transformer", torch_dtype=dtype)


def random_adapter(
    shapes: LinearShapes,
    out: Path,
    *,
    rank: int = 8,
    alpha: int | None = None,
    targets: Sequence[str] = COGKIT_TARGETS,
    seed: int = 0,
    std: float = 0.05,
) -> Path:
    """Like ``make_adapter`` in PEFT's layout, from the layers' shapes alone: no model is loaded, so
    it is quick even for the full-size model. Targets match module paths by their last parts, as
    PEFT's ``target_modules`` does."""
    import torch
    from safetensors.torch import save_file

    alpha = alpha if alpha is not None else max(1, rank // 2)
    modules = [m for m in sorted(shapes) if any(m == t or m.endswith(f".{t}") for t in targets)]
    if not modules:
        raise ValueError(f"the model has no layers named {', '.join(targets)}")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in modules:
        in_features, out_features = shapes[module]
        tensors[f"base_model.model.{module}.lora_A.weight"] = (
            torch.randn(rank, in_features, generator=generator) * std
        )
        tensors[f"base_model.model.{module}.lora_B.weight"] = (
            torch.randn(out_features, rank, generator=generator) * std
        )
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / PEFT_WEIGHTS))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": sorted(targets)}
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2))
    return out
