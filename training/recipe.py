"""What the built-in shapes model is made of: its tokenizer, its three networks, its training sizes.

The classes are CogView4-6B's own (``GlmModel``, ``CogView4Transformer2DModel``, ``AutoencoderKL``
with 16 latent channels and no mid-block attention, the real flow-matching scheduler config); only
the sizes are small. Everything is built from fixed seeds, so a rerun builds the same starting point.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cogserve.shapes.captions import describe, off_world
from cogserve.shapes.world import sample_scene

TOKENIZER_SEED = 7
VOCAB_SIZE = 1024


@dataclass(frozen=True)
class Sizes:
    text_hidden: int = 128
    text_layers: int = 3  # the pipeline reads the second-to-last hidden state: layers 1-2 matter
    text_heads: int = 4
    text_kv_heads: int = 2
    text_head_dim: int = 32
    text_intermediate: int = 256
    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    time_embed_dim: int = 128
    condition_dim: int = 32
    vae_channels: tuple[int, int, int, int] = (16, 32, 64, 64)
    # One group: GroupNorm over a flat picture removes each group's mean and spread, and with it the
    # colour; with a single group only two numbers of the whole feature vector are lost.
    vae_groups: int = 1


SIZES = Sizes()


def caption_corpus(count: int, seed: int = TOKENIZER_SEED) -> list[str]:
    """Training captions in both languages (the tokenizer learns its merges from these)."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        language = "en" if i % 2 == 0 else "zh"
        scene = sample_scene(rng, rng.choice((1.0, 0.6, 1.7)))
        caption = off_world(rng, language) if i % 20 == 0 else describe(scene, rng, language)
        texts.append(caption.text)
    return texts


def build_tokenizer() -> object:
    """The built-in tokenizer's recipe (GLM-4 specials, ``[gMASK]<sop>``), learnt from captions."""
    from cogserve.engine.builtin import build_tokenizer as build_bpe

    return build_bpe(caption_corpus(20000), vocab_size=VOCAB_SIZE)


def build_text_encoder(vocab_size: int, pad_id: int, sizes: Sizes = SIZES) -> object:
    from transformers import GlmConfig, GlmModel

    return GlmModel(
        GlmConfig(
            vocab_size=vocab_size,
            hidden_size=sizes.text_hidden,
            intermediate_size=sizes.text_intermediate,
            num_hidden_layers=sizes.text_layers,
            num_attention_heads=sizes.text_heads,
            num_key_value_heads=sizes.text_kv_heads,
            head_dim=sizes.text_head_dim,
            partial_rotary_factor=0.5,
            attention_bias=True,
            max_position_embeddings=2048,
            pad_token_id=pad_id,
            eos_token_id=pad_id,
        )
    )


def build_transformer(sizes: Sizes = SIZES) -> object:
    from diffusers import CogView4Transformer2DModel

    return CogView4Transformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=sizes.layers,
        attention_head_dim=sizes.head_dim,
        num_attention_heads=sizes.heads,
        text_embed_dim=sizes.text_hidden,
        time_embed_dim=sizes.time_embed_dim,
        condition_dim=sizes.condition_dim,
        pos_embed_max_size=128,
        sample_size=128,
        rope_axes_dim=(256, 256),
    )


def build_vae(sizes: Sizes = SIZES) -> object:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=sizes.vae_channels,
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=sizes.vae_groups,
        sample_size=128,
        scaling_factor=1.0,  # set from the latents' spread once the VAE is trained
        shift_factor=0.0,  # CogView4Pipeline does not apply a shift when decoding
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        force_upcast=True,
    )
