"""Train the built-in shapes model's demo LoRA adapter, ``night``: the same scene on a black background.

    python -m training.adapter      # resumes; writes engine/weights/cogview4-shapes-v1-loras/night
    python -m training.adapter --quick --work /tmp/a --out /tmp/a/night   # a smoke run (seconds)

The base model (the shipped ``cogview4-shapes-v1`` folder) stays frozen. ``peft`` injects LoRA layers
on CogKit's targets (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) and only those train, on the base's
own flow-matching loss (``training.stages.flow_loss``) over the same scenes drawn at night (``night``
below), with the base's captions: a caption keeps saying "a red circle on a blue background", the
adapter draws the red circle on black. Two other styles were tried first and dropped: a pastel
palette (the shipped VAE, trained on the palette's colours only, does not reproduce pastel shades,
so no adapter of the transformer can) and outlined shapes (the base model draws shapes as blobs,
and outlines of blobs came out as scattered fragments).
The result is a PEFT folder (CogKit's layout), served with the shapes model like any adapter.

An adapter fits the weights it was trained on: its checkpoint and latent banks are named after the
base's transformer and VAE files, so after the base is retrained the same command starts afresh
instead of resuming.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from cogserve.engine.builtin import SHAPES_LORAS, SHAPES_PATH
from cogserve.shapes.world import Scene
from training import data, stages

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = REPO / "training" / "checkpoints"
log = logging.getLogger("training")

NAME = "night"
RANK = 16


def night(scene: Scene) -> Scene:
    """The adapter's style: the same shapes on a black background; a black shape turns white."""
    shapes = tuple(replace(s, colour="white") if s.colour == "black" else s for s in scene.shapes)
    return Scene("black", shapes)


#: The sizes the adapter trains at for a base model that draws at about 192x192; a base that draws
#: larger (``cogserve.json``'s ``native_pixels``) gets them scaled (``buckets_for``).
BUCKETS: tuple[tuple[int, int, float], ...] = (
    (128, 128, 0.25),
    (112, 192, 0.15),
    (192, 112, 0.15),
    (192, 192, 0.45),
)


def buckets_for(model_path: Path) -> tuple[tuple[int, int, float], ...]:
    """``BUCKETS`` scaled to the size the base model at ``model_path`` draws at."""
    from cogserve.engine.loader import serving_hints

    pixels = serving_hints(str(model_path)).native_pixels
    return BUCKETS if pixels is None else data.native_buckets(math.isqrt(pixels), BUCKETS)


def fingerprint(path: Path) -> str:
    """A short name for a weights file's contents."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def export(model: nn.Module, config: object, out: Path) -> None:
    """Write the adapter folder, replacing ``out`` whole so a server never reads half of it."""
    from cogserve.engine.lora_make import save_adapter

    stages.replace_folder(out, lambda staging: save_adapter(model, config, staging))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-path", type=Path, default=SHAPES_PATH, help="the base model folder")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="checkpoint folder")
    parser.add_argument("--out", type=Path, default=SHAPES_LORAS / NAME, help="the adapter folder written")
    parser.add_argument("--steps", type=int, default=4000, help="steps in all (a rerun resumes)")
    parser.add_argument("--batch", type=int, default=data.BASE_BATCH, help="pictures per step at 128x128")
    parser.add_argument("--bank", type=int, default=2048, help="scenes per latent bank at 128x128")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--quick", action="store_true", help="a few steps: a smoke run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.steps, args.batch, args.bank = 3, 4, 32
    args.work.mkdir(parents=True, exist_ok=True)

    from diffusers import CogView4Pipeline
    from peft import LoraConfig, inject_adapter_in_model

    from cogserve.engine.lora_make import COGKIT_TARGETS

    torch.manual_seed(stages.SEED)
    pipe = CogView4Pipeline.from_pretrained(args.model_path)
    for network in (pipe.text_encoder, pipe.vae, pipe.transformer):
        network.requires_grad_(False)
        network.eval()
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=list(COGKIT_TARGETS))
    transformer = inject_adapter_in_model(config, pipe.transformer)
    params = [p for name, p in transformer.named_parameters() if ".lora_" in name]
    for parameter in params:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    base = fingerprint(args.model_path / "transformer" / "diffusion_pytorch_model.safetensors")
    encoder = fingerprint(args.model_path / "vae" / "diffusion_pytorch_model.safetensors")
    bank = data.LatentBank(
        pipe.vae,
        pipe.vae.config.scaling_factor,
        args.work,
        args.bank,
        restyle=night,
        name=f"{NAME}-latents-{encoder}",
    )
    buckets = buckets_for(args.model_path)
    bank.prepare(buckets)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        text_encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
        loss = stages.flow_loss(
            transformer, text_encoder, tokenizer, bank, buckets, args.batch, step, serving_padding=True
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return {"loss": loss.detach()}

    started = time.perf_counter()
    stages.run_loop(
        f"adapter {NAME}",
        args.work / f"{NAME}-{base}.pt",
        args.steps,
        {"lora": nn.ParameterList(params)},  # only the adapter: the base is the shipped folder
        optimizer,
        step_fn,
        base_lr=args.lr,
        warmup=100,
    )
    log.info("adapter %s: trained in %.0f s", NAME, time.perf_counter() - started)
    export(transformer, config, args.out)


if __name__ == "__main__":
    main()
