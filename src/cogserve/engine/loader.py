"""Find and load a CogView4 pipeline: the built-in tiny one, a local folder, or the local HF cache."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogserve.engine.builtin import (
    BUILTIN_NAME,
    SHAPES_NAME,
    SHAPES_NOTICE,
    SHAPES_PATH,
    ensure_builtin_model,
)
from cogserve.engine.modes import check_modes, place_and_apply, quantization_config
from cogserve.engine.prompt_tokens import MAX_PROMPT_TOKENS
from cogserve.errors import ConfigError
from cogserve.logs import adopt_library_loggers
from cogserve.settings import ModelSettings

log = logging.getLogger(__name__)

BUILTIN_WARNING = (
    "Using the BUILT-IN TINY RANDOM CogView4 model: it has RANDOM WEIGHTS, so every image is noise. "
    "It exists to test cogserve quickly; the built-in shapes model (--builtin shapes) draws. For "
    "real images pass --model-path "
    "/path/to/CogView4-6B (a diffusers-layout folder) or a repo id already in the local Hugging Face "
    "cache, e.g. --model-path zai-org/CogView4-6B."
)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{requested}' requested but CUDA is not available here")
        return requested
    if requested == "cpu":
        return requested
    raise ConfigError(f"unknown device '{requested}': use auto, cpu, cuda or cuda:N")


def resolve_dtype(requested: str, device: str) -> Any:
    import torch

    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if requested == "bf16":
        if device == "cpu":
            log.warning("bf16 on CPU is much slower than fp32 (about 13x measured); prefer --dtype fp32")
        return torch.bfloat16
    if requested == "fp32":
        return torch.float32
    # Settings already refuse fp16 with its reason; anything else is a programming error.
    raise ConfigError(f"unsupported dtype '{requested}': use auto, bf16 or fp32")


def locate_model(settings: ModelSettings, models_dir: Path) -> tuple[str, str | None]:
    """Return (what to pass to from_pretrained, the built-in model's name or None)."""
    if settings.path is not None:
        return _locate_given(settings.path, settings.allow_download), None
    if settings.builtin == "tiny-random":
        return str(ensure_builtin_model(models_dir)), BUILTIN_NAME
    if not (SHAPES_PATH / "model_index.json").is_file():
        raise ConfigError(
            f"the built-in shapes model is missing from this installation ({SHAPES_PATH}); "
            "reinstall cogserve, or rebuild it with `python -m training.train` from a source checkout"
        )
    return str(SHAPES_PATH), SHAPES_NAME


def _locate_given(given: str, allow_download: bool) -> str:
    """A --model-path: a diffusers folder, or a repo id (in the local HF cache unless downloads are on)."""
    path = Path(given).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ConfigError(
                f"model folder '{path}' has no model_index.json: point --model-path at a diffusers-layout "
                "CogView4 folder (the one holding model_index.json, transformer/, vae/, ...)"
            )
        return str(path)
    if path.exists() or given.count("/") != 1:
        raise ConfigError(
            f"model path '{given}' is neither a diffusers-layout folder nor a Hugging Face repo id"
        )
    if not allow_download and not _in_hf_cache(given):
        raise ConfigError(
            f"'{given}' is not in the local Hugging Face cache and downloads are off. Fetch it "
            f"first (hf download {given}), point --model-path at a local folder, "
            "or pass --allow-download."
        )
    return given


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def preflight(settings: ModelSettings) -> None:
    """Check what can be checked before the server starts: device, dtype, modes, where the model is."""
    device = resolve_device(settings.device)
    resolve_dtype(settings.dtype, device)
    check_modes(settings, device)
    if settings.path is not None:
        _locate_given(settings.path, settings.allow_download)


def _quiet_libraries() -> None:
    # Loading bars from diffusers/transformers would interleave with the server's log lines, and
    # their own log handlers (and torch's) would bypass cogserve's formatter. Called before the
    # pipeline's modules are imported: some of them log as they are imported.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    adopt_library_loggers()


#: A model folder may carry this file with how cogserve should serve it (diffusers ignores it), e.g.
#: the built-in shapes model's ``{"native_pixels": 36864, "prompt_tokens": 32}``:
#:
#: - ``native_pixels``: the model draws at about that many pixels and the engine enlarges to the
#:   size asked for (the shapes model trained at 112-256 px a side);
#: - ``prompt_tokens``: prompts (and the empty negative prompt) are left-padded to at least that
#:   many tokens. The pipeline pads only to a multiple of 16, and its text encoder reads the pad
#:   tokens (no attention mask), so a model trained on batches padded to their longest caption
#:   misreads the first words of a short prompt padded far less than in training.
SERVING_FILE = "cogserve.json"


@dataclass(frozen=True)
class ServingHints:
    native_pixels: int | None = None
    prompt_tokens: int | None = None


def serving_hints(source: str) -> ServingHints:
    path = Path(source) / SERVING_FILE
    if not path.is_file():
        return ServingHints()
    try:
        hints = json.loads(path.read_text(encoding="utf-8"))
        pixels, tokens = hints.get("native_pixels"), hints.get("prompt_tokens")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if pixels is not None and not _whole(pixels, 16 * 16):
        raise ConfigError(f"{path}: native_pixels must be a whole number of pixels, at least 256")
    if tokens is not None and not _whole(tokens, 1, MAX_PROMPT_TOKENS):
        raise ConfigError(f"{path}: prompt_tokens must be a whole number from 1 to {MAX_PROMPT_TOKENS}")
    return ServingHints(pixels, tokens)


def _whole(value: object, least: int, most: int | None = None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= least
        and (most is None or value <= most)
    )


def load_pipeline(
    settings: ModelSettings, models_dir: Path, device: str
) -> tuple[Any, str | None, ServingHints]:
    """The pipeline, the built-in model's name (None for a given model) and its serving hints."""
    _quiet_libraries()
    from diffusers import CogView4Pipeline

    source, builtin = locate_model(settings, models_dir)
    if builtin == BUILTIN_NAME:
        log.warning(BUILTIN_WARNING)
    elif builtin == SHAPES_NAME:
        log.warning(SHAPES_NOTICE)
    dtype = resolve_dtype(settings.dtype, device)
    check_modes(settings, device)
    try:
        pipe = CogView4Pipeline.from_pretrained(
            source,
            dtype=dtype,
            local_files_only=not settings.allow_download,
            quantization_config=quantization_config(settings, dtype),
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load model '{source}': {exc}") from exc
    place_and_apply(pipe, settings, device)
    pipe.set_progress_bar_config(disable=True)
    log.debug("loaded %s on %s (%s)", builtin or source, device, str(dtype))  # "ready:" says it
    return pipe, builtin, serving_hints(source)
