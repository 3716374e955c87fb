"""The built-in models: the trained shapes model shipped in the package, and a tiny random one.

``cogview4-shapes-v1`` is a small CogView4 (the real classes, shrunk) trained by ``training/`` on the
shapes world (``cogserve.shapes``); its weights ship in ``engine/weights/`` and load with
``CogView4Pipeline.from_pretrained`` like any model, with no download. Its training is not finished:
it becomes the default once ``benchmarks/shapes_eval.py`` meets its targets (docs/builtin-model.md).

``cogview4-tiny-v1`` has random weights: every image is noise, but every step (tokenise, encode,
denoise, decode, seeds, callbacks) is production code, at a fraction of the cost. The test suite
uses it wherever what the picture shows does not matter. It is built from a fixed seed (a byte-level
BPE tokenizer trained here, ``GlmModel``, ``CogView4Transformer2DModel``, a 4-level ``AutoencoderKL``
with 16 latent channels, the real scheduler config), so two machines build byte-identical weights,
saved once and then loaded like any model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cogserve.settings import ModelSettings

log = logging.getLogger(__name__)

#: Bump when the recipe changes: a new version is built beside the old one, never over it.
BUILTIN_NAME = "cogview4-tiny-v1"
SHAPES_NAME = "cogview4-shapes-v1"
SHAPES_PATH = Path(__file__).resolve().parent / "weights" / SHAPES_NAME
#: LoRA adapters trained on the shapes model (``training/adapter.py``), served whenever it is.
SHAPES_LORAS = SHAPES_PATH.with_name(f"{SHAPES_NAME}-loras")

#: Said at every start with the shapes model, so nobody mistakes it for CogView4-6B or a finished model.
SHAPES_NOTICE = (
    "Serving the BUILT-IN SHAPES MODEL (cogview4-shapes-v1, a small CogView4 shipped with cogserve), "
    "STILL IN TRAINING: it is being trained to draw one or two flat shapes (circle, square, triangle, "
    "star) in 10 colours (red, orange, yellow, green, blue, purple, pink, white, black, grey), 3 sizes "
    "and 9 positions on a solid background, from English or Chinese prompts, and this checkpoint does "
    "not draw them reliably yet (docs/builtin-model.md has its latest evaluation). For CogView4-6B "
    "pass --model-path /path/to/CogView4-6B or a repo id in the local Hugging Face cache."
)
#: What the playground says while the shapes model serves.
SHAPES_NOTE = (
    "This server runs the built-in shapes model, not CogView4-6B. It is still in training: it is "
    "learning to draw one or two flat shapes (circle, square, triangle, star) in 10 colours, 3 sizes "
    "and 9 positions on a solid background, from English or Chinese prompts, and does not draw them "
    "reliably yet. Prompts from its world:"
)
#: What the playground says while the tiny random model serves (every picture is noise).
TINY_NOTE = (
    "This server runs the built-in tiny random model: its weights are random, so every picture is "
    "coloured noise, whatever the prompt. It is there to try the API, the SDKs and this page without "
    "a download. Start the server with --builtin shapes for the built-in model that draws flat "
    "shapes, or with --model-path for CogView4-6B."
)
#: Prompts the playground offers while the shapes model serves.
SHAPES_EXAMPLES = (
    "a red circle on a blue background",
    "a large yellow star in the top-left corner on a black background",
    "a small white square at the bottom right, and a green triangle at the top left, grey background",
    "蓝色背景上，中间有一个大的橙色三角形",
    "左上角有一个粉色的圆形，右下角有一个紫色的正方形，白色背景",
)
BUILD_SEED = 20250304

# The scheduler config of the real CogView4-6B (reference/cogview4-model.md).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.25,
    "max_shift": 0.75,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "linear",
}

TEXT_DIM = 32
SPECIAL_TOKENS = ["<|endoftext|>", "[gMASK]", "<sop>"]

# A small bilingual corpus: enough for BPE merges that look like a real tokenizer's. Any text still
# encodes, because all 256 bytes are in the initial alphabet.
_CORPUS = [
    "a cute little kitten sitting on a windowsill in the warm afternoon sun",
    "a photograph of an astronaut riding a horse on the surface of the moon",
    "watercolor painting of a quiet mountain lake at dawn, mist over the water",
    "a bowl of steaming noodles with green onions and chili oil, studio lighting",
    "一只可爱的小猫咪坐在窗台上晒太阳",
    "夕阳下的长城，金色的光芒洒在古老的城墙上",
    "一碗热气腾腾的牛肉面，葱花和辣椒油",
    "水墨画风格的山水，远处有一叶小舟",
    "city street at night in the rain, neon signs reflected in puddles",
    "a red panda eating bamboo in a snowy forest, highly detailed",
]


def shipped_adapters(model: ModelSettings) -> Path | None:
    """The LoRA folder shipped with the served model: the shapes model's; None for any other."""
    if model.path is None and model.builtin == "shapes" and SHAPES_LORAS.is_dir():
        return SHAPES_LORAS
    return None


def builtin_model_path(models_dir: Path) -> Path:
    return models_dir / BUILTIN_NAME


def ensure_builtin_model(models_dir: Path) -> Path:
    """Return the folder of the built-in model, building it first if it is not there yet.

    The build goes to a temporary sibling folder that is renamed into place, so a crash never
    leaves a half-written model, and two processes building at once both end up with a whole one.
    """
    target = builtin_model_path(models_dir)
    if (target / "model_index.json").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BUILTIN_NAME}-", dir=models_dir))
    try:
        build_builtin_pipeline().save_pretrained(staging, safe_serialization=True)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
            log.info("another process built the built-in model first; using it")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tokenizer(corpus: Iterable[str] = _CORPUS, vocab_size: int = 600) -> Any:
    """A byte-level BPE learnt from ``corpus`` (any text still encodes: all 256 bytes are in its
    alphabet), with GLM-4's specials and ``[gMASK]<sop>`` prefix. The defaults build the tiny model's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    gmask, sop = tok.token_to_id("[gMASK]"), tok.token_to_id("<sop>")
    # GLM-4 prefixes every prompt with [gMASK]<sop>.
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", special_tokens=[("[gMASK]", gmask), ("<sop>", sop)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )


@dataclass(frozen=True)
class Architecture:
    """Sizes of CogView4's three networks. ``TINY`` is the built-in model; ``FULL`` is CogView4-6B
    (the GPU benchmark builds it with random weights)."""

    layers: int
    heads: int
    head_dim: int  # divisible by 4: CogView4 splits it over 2-D RoPE
    time_embed_dim: int
    condition_dim: int
    text_layers: int  # >= 2: the pipeline reads the second-to-last hidden state
    text_hidden: int
    text_intermediate: int
    text_heads: int
    text_kv_heads: int
    text_head_dim: int
    text_positions: int
    vae_channels: tuple[int, int, int, int]
    vae_layers_per_block: int
    vae_groups: int
    vae_sample_size: int


TINY = Architecture(
    layers=2,
    heads=4,
    head_dim=16,
    time_embed_dim=16,
    condition_dim=8,
    text_layers=2,
    text_hidden=TEXT_DIM,
    text_intermediate=64,
    text_heads=4,
    text_kv_heads=2,
    text_head_dim=8,
    text_positions=4096,
    vae_channels=(8, 16, 16, 16),
    vae_layers_per_block=1,
    vae_groups=8,
    vae_sample_size=128,
)
FULL = Architecture(
    layers=28,
    heads=32,
    head_dim=128,
    time_embed_dim=512,
    condition_dim=256,
    text_layers=40,
    text_hidden=4096,
    text_intermediate=13696,
    text_heads=32,
    text_kv_heads=2,
    text_head_dim=128,
    text_positions=8192,
    vae_channels=(128, 512, 1024, 1024),
    vae_layers_per_block=3,
    vae_groups=32,
    vae_sample_size=1024,
)


def build_transformer(arch: Architecture) -> Any:
    """A randomly initialised ``CogView4Transformer2DModel`` of ``arch`` (the built-in models', or the
    full-size one's for tests), on the current default device and dtype."""
    from diffusers import CogView4Transformer2DModel

    return CogView4Transformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=arch.layers,
        attention_head_dim=arch.head_dim,
        num_attention_heads=arch.heads,
        text_embed_dim=arch.text_hidden,
        time_embed_dim=arch.time_embed_dim,
        condition_dim=arch.condition_dim,
        pos_embed_max_size=128,
        sample_size=128,
        rope_axes_dim=(256, 256),
    )


def build_networks(arch: Architecture, vocab_size: int, pad_id: int) -> tuple[Any, Any, Any]:
    """(text encoder, transformer, VAE) with random weights, in torch's current default dtype/device."""
    from diffusers import AutoencoderKL
    from transformers import GlmConfig, GlmModel

    text_encoder = GlmModel(
        GlmConfig(
            vocab_size=vocab_size,
            hidden_size=arch.text_hidden,
            intermediate_size=arch.text_intermediate,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=arch.text_heads,
            num_key_value_heads=arch.text_kv_heads,
            head_dim=arch.text_head_dim,
            partial_rotary_factor=0.5,
            attention_bias=True,
            max_position_embeddings=arch.text_positions,
            pad_token_id=pad_id,
            eos_token_id=pad_id,
        )
    )
    transformer = build_transformer(arch)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=arch.vae_channels,
        layers_per_block=arch.vae_layers_per_block,
        latent_channels=16,
        norm_num_groups=arch.vae_groups,
        sample_size=arch.vae_sample_size,
        scaling_factor=1.0,
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        force_upcast=True,
    )
    return text_encoder, transformer, vae


def build_builtin_pipeline() -> Any:
    """Build the tiny pipeline in memory, deterministically (fp32, CPU, fixed seed)."""
    import torch
    from diffusers import CogView4Pipeline, FlowMatchEulerDiscreteScheduler

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        text_encoder, transformer, vae = build_networks(TINY, len(tokenizer), tokenizer.pad_token_id)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    for module in (text_encoder, transformer, vae):
        module.eval()
    return CogView4Pipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
