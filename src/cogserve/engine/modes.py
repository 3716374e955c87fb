"""Memory and speed modes: checked before loading, applied to a loaded pipeline.

Each mode is a diffusers or torch feature used as documented; none changes what a request means.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from cogserve.errors import ConfigError
from cogserve.settings import ModelSettings

log = logging.getLogger(__name__)


def check_modes(settings: ModelSettings, device: str) -> None:
    """Refuse, with the reason, a combination this device or this install cannot run."""
    cuda = device.startswith("cuda")
    if settings.offload != "none" and not cuda:
        raise ConfigError(
            f"--offload {settings.offload} moves weights between CPU and an accelerator; "
            f"the device is {device}. Use --offload none on a CPU."
        )
    if settings.text_encoder_quant == "int8" and not _installed("torchao"):
        raise ConfigError(
            "--text-encoder-quant int8 needs torchao: pip install 'cogserve[quant]' (or pip install torchao)"
        )
    if settings.text_encoder_quant == "nf4":
        if not cuda:
            raise ConfigError("--text-encoder-quant nf4 (bitsandbytes 4-bit) needs CUDA; use int8 on a CPU")
        if not _installed("bitsandbytes"):
            raise ConfigError("--text-encoder-quant nf4 needs bitsandbytes: pip install 'cogserve[quant]'")
    if settings.compile and not cuda and not _has_c_compiler():
        raise ConfigError("--compile on CPU needs a C++ compiler (gcc or clang) for torch's inductor backend")


def quantization_config(settings: ModelSettings, dtype: Any) -> Any:
    """What ``from_pretrained`` needs for modes applied at load time (nf4), else None."""
    if settings.text_encoder_quant != "nf4":
        return None
    from diffusers.quantizers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": dtype,
        },
        components_to_quantize=["text_encoder"],
    )


def place_and_apply(pipe: Any, settings: ModelSettings, device: str) -> None:
    """Move the pipeline to its device (or set up offload), then turn on the other modes."""
    if settings.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif settings.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if settings.text_encoder_quant == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(pipe.text_encoder, Int8WeightOnlyConfig())
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.fbc_threshold is not None:
        from diffusers import FirstBlockCacheConfig

        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=settings.fbc_threshold))
    if settings.compile:
        # In place, so pipe.transformer keeps its config and hooks; the warm-up triggers the compile.
        pipe.transformer.compile()
    active = describe_modes(settings)
    if active:
        log.info("modes: %s", ", ".join(active))


def describe_modes(settings: ModelSettings) -> list[str]:
    modes = []
    if settings.offload != "none":
        modes.append(f"offload={settings.offload}")
    if settings.text_encoder_quant != "none":
        modes.append(f"text_encoder_quant={settings.text_encoder_quant}")
    if settings.vae_tiling:
        modes.append("vae_tiling")
    if settings.step_cache != "none":
        modes.append(f"step_cache={settings.step_cache}")
    if settings.compile:
        modes.append("compile")
    return modes


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _has_c_compiler() -> bool:
    import shutil

    return any(shutil.which(name) for name in ("g++", "c++", "clang++", "gcc", "cc"))
