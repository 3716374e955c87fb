"""Train the built-in shapes model and export it as a diffusers CogView4 pipeline folder.

    python -m training.train                      # everything, resuming where it stopped
    python -m training.train --steps 100000       # train the transformer further
    python -m training.train --quick --work /tmp/t --out /tmp/t/model   # a smoke run (seconds)
    python -m training.train --device cuda --batch 256 --bank 16384 --minutes 8   # on a GPU
    python -m training.train --steps 120000 --lr 2e-4 --minutes 90   # on a CPU, in the background
    python -m training.train --work /tmp/w --out /tmp/m --draw-side 224 --steps 150000   # draw at 224²
                                                  # (/tmp/w: a copy of training/checkpoints)

The work folder keeps one checkpoint per stage (weights, optimizer, EMA, step); every stage resumes
from its own, and the data stream is a function of the step, so an interrupted run continues exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from training import data, recipe, stages

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = REPO / "training" / "checkpoints"
DEFAULT_OUT = REPO / "src" / "cogserve" / "engine" / "weights" / "cogview4-shapes-v1"
log = logging.getLogger("training")
#: The shipped decoder's steps (its 45-minute budget ended there): a rerun resumes the committed
#: checkpoints and leaves the decoder as shipped unless ``--decoder-steps`` asks for more.
DECODER_STEPS = 2721


def load_tokenizer(work: Path) -> object:
    from transformers import PreTrainedTokenizerFast

    folder = work / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer = recipe.build_tokenizer()
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    return tokenizer


def export(
    tokenizer: object,
    text_encoder: object,
    vae: object,
    transformer: object,
    out: Path,
    native_pixels: int = data.NATIVE_PIXELS,
) -> None:
    """Save a pipeline folder that ``CogView4Pipeline.from_pretrained`` loads; atomically replaced.
    Its ``cogserve.json`` tells the engine to draw at about ``native_pixels`` and enlarge."""
    from diffusers import CogView4Pipeline, FlowMatchEulerDiscreteScheduler

    from cogserve.engine.builtin import SCHEDULER_CONFIG
    from cogserve.engine.loader import SERVING_FILE

    pipe = CogView4Pipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
    )

    def write(staging: Path) -> None:
        pipe.save_pretrained(staging, safe_serialization=True)
        serving = {"native_pixels": native_pixels, "prompt_tokens": data.PROMPT_TOKENS}
        (staging / SERVING_FILE).write_text(json.dumps(serving, indent=2) + "\n", encoding="utf-8")

    stages.replace_folder(out, write)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="checkpoint folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the pipeline folder goes")
    parser.add_argument("--vae-steps", type=int, default=1500, help="the committed VAE is at 1,500")
    parser.add_argument(
        "--decoder-steps",
        type=int,
        default=DECODER_STEPS,
        help="VAE decoder steps, encoder frozen (the committed decoder is at 2,721)",
    )
    parser.add_argument(
        "--text-steps",
        type=int,
        default=3000,
        help="the committed encoder is at 3,000 (1,500 before the anchor)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=100000,
        help="transformer steps in all, not more (the committed transformer is at 76,729)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1..."
    )
    parser.add_argument(
        "--batch", type=int, default=data.BASE_BATCH, help="transformer pictures per step at 128x128"
    )
    parser.add_argument(
        "--bank", type=int, default=8192, help="scenes per latent bank at 128x128 (others in proportion)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="transformer learning rate (lower it to anneal, or for batches smaller than the GPU's 256)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help="time budget: the decoder and transformer stages checkpoint and stop once it is spent",
    )
    parser.add_argument(
        "--native-from",
        type=int,
        default=stages.NATIVE_FROM,
        help="the transformer step from which it trains at the drawn sizes, shapes weighted",
    )
    parser.add_argument(
        "--draw-side",
        type=int,
        default=data.NATIVE_SIDE,
        help="the model draws at about this many px squared (the drawn sizes scale with it; the shipped "
        "model draws at 192; 224-320 raise what the VAE keeps). Give it again with --export-only",
    )
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage: a smoke run")
    parser.add_argument(
        "--export-only", action="store_true", help="export the checkpoints as they are (training may run on)"
    )
    args = parser.parse_args(argv)
    if args.draw_side < 64 or args.draw_side % 16:
        parser.error(f"--draw-side must be a multiple of 16, at least 64, got {args.draw_side}")
    deadline = None if args.minutes is None else time.monotonic() + args.minutes * 60
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.vae_steps, args.decoder_steps, args.text_steps, args.steps = 3, 3, 3, 3
        args.native_from = 2
    if args.export_only:
        missing = [n for n in ("vae.pt", "text.pt", "transformer.pt") if not (args.work / n).is_file()]
        if missing:
            parser.error(f"no checkpoint to export in {args.work}: {', '.join(missing)} missing")
        args.vae_steps = args.decoder_steps = args.text_steps = args.steps = 0
    args.work.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(stages.SEED)
    tokenizer = load_tokenizer(args.work)
    text_encoder = recipe.build_text_encoder(len(tokenizer), tokenizer.pad_token_id)  # type: ignore[arg-type,attr-defined]
    vae = recipe.build_vae()
    transformer = recipe.build_transformer()
    stages.zero_init(transformer)  # type: ignore[arg-type]
    ema = stages.ema_copy(transformer)  # type: ignore[arg-type]
    networks = (text_encoder, vae, transformer, ema)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # the default float32 matmuls are several times slower
        torch.backends.cudnn.allow_tf32 = True
    for network in networks:
        network.to(args.device)  # type: ignore[attr-defined]

    stages.train_vae(vae, args.work, args.vae_steps)  # type: ignore[arg-type]
    scale = stages.latent_scale(vae, 16 if args.quick else 256)  # type: ignore[arg-type]
    vae.register_to_config(scaling_factor=scale)  # type: ignore[attr-defined]
    log.info("latent scaling factor %.4f", scale)
    stages.train_decoder(vae, args.work, args.decoder_steps, deadline)  # type: ignore[arg-type]
    stages.train_text(text_encoder, tokenizer, args.work, args.text_steps)  # type: ignore[arg-type]
    stages.train_transformer(
        transformer,  # type: ignore[arg-type]
        ema,
        text_encoder,  # type: ignore[arg-type]
        vae,  # type: ignore[arg-type]
        tokenizer,
        scale,
        args.work,
        args.steps,
        base_batch=4 if args.quick else args.batch,
        bank_size=64 if args.quick else args.bank,
        lr=args.lr,
        deadline=deadline,
        native_from=args.native_from,
        native_buckets=data.native_buckets(args.draw_side),
    )
    for network in networks:
        network.to("cpu")  # type: ignore[attr-defined]
    # A fresh tokenizer: one that has padded batches keeps that padding in its saved tokenizer.json.
    export(load_tokenizer(args.work), text_encoder, vae, ema, args.out, native_pixels=args.draw_side**2)


if __name__ == "__main__":
    main()
