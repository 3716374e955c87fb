"""The three training stages of the built-in model, each resumable from its last checkpoint.

1. VAE: reconstruct random pictures (random sizes: the VAE is convolutional, so crops suffice).
2. Text encoder: from the second-to-last hidden state (what CogView4Pipeline hands the transformer),
   attention-pooling heads predict what the caption says (background, count, and each named
   shape's colour, shape, size, position, or "not said"). A text encoder that already separates
   these lets the transformer learn layout instead of reading.
3. Transformer: rectified-flow (velocity) loss on the frozen VAE's latents, conditioned on the frozen
   text encoder; several aspect ratios and sizes; an EMA copy is what ships.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training import data

log = logging.getLogger("training")

SEED = 20261130


# --- checkpoints ----------------------------------------------------------------------------------
def save_atomic(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def replace_folder(out: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a staging folder beside ``out``, then put it in place of ``out`` whole, so
    a reader (a server, a test) never sees half of it; logs the folder's size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("exported %s (%.2f MB)", out, size / 1e6)


def load(path: Path) -> dict[str, Any] | None:
    # map_location: a checkpoint written on a GPU resumes on a CPU and the other way round.
    return torch.load(path, weights_only=False, map_location="cpu") if path.is_file() else None


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def run_loop(
    name: str,
    path: Path,
    total_steps: int,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    step_fn: Callable[[int], dict[str, float]],
    *,
    every: int = 250,
    extra_state: Callable[[], dict[str, Any]] = dict,
    restore_extra: Callable[[dict[str, Any]], None] = lambda state: None,
    warmup: int = 200,
    base_lr: float = 1e-3,
    deadline: float | None = None,
    setup: Callable[[int], None] = lambda start: None,
) -> None:
    """Steps ``start..total_steps`` of one stage; checkpoints every ``every`` steps and at the end.

    ``step_fn`` may return tensors: they are read only when logged, so a GPU is not made to wait
    every step. Past ``deadline`` (a ``time.monotonic()`` value) the stage checkpoints and stops.
    ``setup(start)`` runs once before the first step, only when there are steps to run.
    """
    state = load(path)
    start = 0
    if state is not None:
        for key, module in modules.items():
            module.load_state_dict(state[key])
        optimizer.load_state_dict(state["optimizer"])
        restore_extra(state)
        start = state["step"]
        log.info("%s: resuming at step %d of %d", name, start, total_steps)
    if deadline is not None and time.monotonic() > deadline and start < total_steps:
        log.info("%s: no time left; stays at step %d", name, start)
        return
    if start < total_steps:
        setup(start)
    started, window = time.perf_counter(), []
    for step in range(start, total_steps):
        for group in optimizer.param_groups:
            group["lr"] = base_lr * min(1.0, (step + 1) / warmup)
        window.append(step_fn(step))
        done = step + 1
        out_of_time = deadline is not None and time.monotonic() > deadline
        if done % 50 == 0 or done == total_steps or out_of_time:
            means = {k: float(sum(w[k] for w in window)) / len(window) for k in window[0]}
            rate = len(window) / (time.perf_counter() - started)
            log.info(
                "%s %d/%d %s (%.2f steps/s)",
                name,
                done,
                total_steps,
                " ".join(f"{k}={v:.4f}" for k, v in means.items()),
                rate,
            )
            started, window = time.perf_counter(), []
        if done % every == 0 or done == total_steps or out_of_time:
            save_atomic(
                {
                    "step": done,
                    "optimizer": optimizer.state_dict(),
                    **{k: m.state_dict() for k, m in modules.items()},
                    **extra_state(),
                },
                path,
            )
        if out_of_time:
            log.info("%s: out of time at step %d; the checkpoint resumes from here", name, done)
            return


# --- 1. VAE ---------------------------------------------------------------------------------------
def train_vae(vae: nn.Module, work: Path, steps: int) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)

    def step_fn(step: int) -> dict[str, float]:
        rng = random.Random(SEED * 7 + step)
        if step % 3 == 2:  # whole pictures too: the decoder meets whole pictures' statistics
            _, images = data.pictures(rng, 8, rng.choice((96, 128)), rng.choice((96, 128)))
        else:
            images = data.crops(rng, 12, rng.choice((64, 80, 96)))
        images = images.to(device_of(vae))
        posterior = vae.encode(images).latent_dist  # type: ignore[operator]
        latents = posterior.sample(generator=torch.Generator().manual_seed(step))
        # A decoder that tolerates small latent errors forgives the transformer's.
        latents = latents + 0.05 * torch.randn_like(latents)
        recon = vae.decode(latents).sample  # type: ignore[operator]
        l1 = F.l1_loss(recon, images)
        mse = F.mse_loss(recon, images)
        kl = posterior.kl().mean() / images[0].numel()
        loss = l1 + mse + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}

    vae.train()
    run_loop("vae", work / "vae.pt", steps, {"vae": vae}, optimizer, step_fn, base_lr=1e-3)
    vae.eval()


#: Pixel sizes the decoder stage trains at: the engine decodes at about 192x192 (``NATIVE_PIXELS``)
#: in the served aspect ratio, so whole pictures of 128-224 px, square, tall and wide.
DECODER_SIDES = (128, 160, 192, 224)
DECODER_BATCH = 8  # pictures per step at 192x192; other sizes keep the pixel count about the same


def decoder_batch(rng: random.Random) -> tuple[list[data.Scene], torch.Tensor]:
    """Whole pictures of one size (square, tall or wide) with their scenes, about 8 x 192² pixels."""
    side = rng.choice(DECODER_SIDES)
    long_side = side * 7 // 4 // 16 * 16
    height, width = rng.choice(((side, side), (side, long_side), (long_side, side)))
    count = max(2, round(DECODER_BATCH * 192 * 192 / (height * width)))
    return data.pictures(rng, count, height, width)


def shape_weights(scenes: list[data.Scene], images: torch.Tensor, weight: float = 4.0) -> torch.Tensor:
    """1 on the background, ``1 + weight`` on the shapes and their edges: a small star is 0.2 % of
    a picture, so an unweighted loss barely notices whether it comes out as a star or a blob."""
    from cogserve.shapes.world import PALETTE

    backgrounds = torch.tensor([PALETTE[s.background][1] for s in scenes], dtype=images.dtype)
    backgrounds = (backgrounds / 127.5 - 1.0).view(-1, 3, 1, 1).to(images.device)
    on_shape = (images - backgrounds).abs().sum(1, keepdim=True) > 0.05
    return 1.0 + weight * on_shape.float()


def train_decoder(vae: nn.Module, work: Path, steps: int, deadline: float | None = None) -> None:
    """Train the VAE's decoder further with its encoder frozen, on whole pictures at the sizes the
    engine decodes, weighting the shapes' pixels up and jittering the latents.

    The encoder (and so every latent the transformer learned) stays as it is: a better decoder
    improves the shipped model without retraining anything else. Measured before this stage: the
    VAE stage's decoder (1,500 steps, mostly crops) gave back only about half the scenes right when
    round-tripping exact renders at 192 px (small shapes and stars lost, greys tinted).
    """
    encoder = vae.encoder  # type: ignore[union-attr]
    decoder = vae.decoder  # type: ignore[union-attr]
    encoder.requires_grad_(False)
    params = list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)

    def step_fn(step: int) -> dict[str, float]:
        rng = random.Random(SEED * 31 + step)
        scenes, images = decoder_batch(rng)
        images = images.to(device_of(vae))
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean  # type: ignore[operator]
            # Up to 15 % of the latents' spread as noise: the transformer's latents are not exact.
            jitter = torch.rand(latents.shape[0], 1, 1, 1, device=latents.device) * 0.15 * latents.std()
            latents = latents + jitter * torch.randn_like(latents)
        recon = vae.decode(latents).sample  # type: ignore[operator]
        l1 = (shape_weights(scenes, images) * (recon - images).abs()).mean()
        mse = F.mse_loss(recon, images)
        loss = l1 + mse
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return {"l1_weighted": l1.item(), "mse": mse.item()}

    decoder.train()
    run_loop(
        "decoder",
        work / "decoder.pt",
        steps,
        {"decoder": decoder},
        optimizer,
        step_fn,
        warmup=100,
        base_lr=5e-4,
        deadline=deadline,
    )
    vae.eval()
    encoder.requires_grad_(True)


@torch.no_grad()
def latent_scale(vae: nn.Module, samples: int = 256) -> float:
    """1 / the spread of the VAE's latents, so the transformer sees unit-variance latents."""
    rng = random.Random(SEED * 11)
    _, images = data.pictures(rng, samples, 128, 128)
    latents = vae.encode(images.to(device_of(vae))).latent_dist.mean  # type: ignore[operator]
    return float(1.0 / latents.std())


# --- 2. text encoder ------------------------------------------------------------------------------
class CaptionHeads(nn.Module):
    """One learned query per head attends over the tokens; a linear layer reads the pooled vector."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(len(data.HEADS), hidden) / math.sqrt(hidden))
        self.keys = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.classifiers = nn.ModuleList(nn.Linear(hidden, head.classes) for head in data.HEADS)

    def forward(self, states: torch.Tensor) -> list[torch.Tensor]:
        states = self.norm(states)
        scores = torch.einsum("hd,btd->bht", self.queries, self.keys(states)) / math.sqrt(states.shape[-1])
        pooled = torch.einsum("bht,btd->bhd", scores.softmax(-1), states)
        return [classifier(pooled[:, i]) for i, classifier in enumerate(self.classifiers)]


def text_states(text_encoder: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """What CogView4Pipeline hands the transformer: the second-to-last hidden state."""
    return text_encoder(ids, output_hidden_states=True).hidden_states[-2]  # type: ignore[no-any-return]


#: How strongly a text encoder trained further keeps the states a transformer has learnt from.
ANCHOR_WEIGHT = 1.0


def train_text(text_encoder: nn.Module, tokenizer: Any, work: Path, steps: int) -> float:
    """Train the text encoder (with its reading heads) to ``steps``.

    Once a transformer has been trained on this encoder's states (``transformer.pt`` exists), more
    text steps would move the states under it. So a run that trains further keeps a frozen copy of
    the encoder as it was (the anchor, saved in the checkpoint so a resumed run keeps the same one)
    and adds how far the states drift from the anchor's, relative to their spread, to the loss: new
    phrasings are learnt into the space the transformer already reads.
    """
    heads = CaptionHeads(text_encoder.config.hidden_size).to(device_of(text_encoder))  # type: ignore[union-attr]
    params = list(text_encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    accuracy = {"value": 0.0}
    anchor: dict[str, nn.Module] = {}

    def restore_anchor(state: dict[str, Any]) -> None:
        if "anchor" in state:
            anchor["encoder"] = copy.deepcopy(text_encoder).requires_grad_(False)
            anchor["encoder"].load_state_dict(state["anchor"])

    def take_anchor(start: int) -> None:
        if "encoder" not in anchor and (work / "transformer.pt").is_file():
            anchor["encoder"] = copy.deepcopy(text_encoder).requires_grad_(False)
            log.info("text: a transformer reads these states; keeping them close to the current ones")

    def step_fn(step: int) -> dict[str, float]:
        rng = random.Random(SEED * 13 + step)
        captions = []
        for _ in range(64):
            scene = data.sample_scene(rng, rng.choice((1.0, 0.6, 1.7)))
            captions.append(data.caption_for(rng, scene, unconditional=0.05))
        device = device_of(text_encoder)
        ids = data.tokenize(tokenizer, [c.text for c in captions], extra_pad=rng.randrange(0, 24)).to(device)
        labels = torch.tensor([data.targets(c) for c in captions], device=device)
        labels = torch.where(labels < 0, 0, labels)
        states = text_states(text_encoder, ids)
        logits = heads(states)
        reading = torch.stack([F.cross_entropy(lg, labels[:, i]) for i, lg in enumerate(logits)]).sum()
        drift = torch.zeros((), device=device)
        if "encoder" in anchor:
            with torch.no_grad():
                anchored = text_states(anchor["encoder"].eval(), ids)
            drift = F.mse_loss(states, anchored) / anchored.var()
        loss = reading + ANCHOR_WEIGHT * drift
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        hits = torch.stack([lg.argmax(-1) == labels[:, i] for i, lg in enumerate(logits)], 1)
        accuracy["value"] = hits.all(1).float().mean().item()
        return {"loss": reading.item(), "drift": drift.item(), "exact": accuracy["value"]}

    text_encoder.train()
    run_loop(
        "text",
        work / "text.pt",
        steps,
        {"text_encoder": text_encoder, "heads": heads},
        optimizer,
        step_fn,
        base_lr=1e-3,
        extra_state=lambda: {"anchor": anchor["encoder"].state_dict()} if "encoder" in anchor else {},
        restore_extra=restore_anchor,
        setup=take_anchor,
    )
    text_encoder.eval()
    for language in ("en", "zh"):
        read = held_out_reading(text_encoder, heads, tokenizer, language)  # type: ignore[arg-type]
        log.info("text: held-out %s templates read right: %s", language, _percent(read))
    return accuracy["value"]


def _percent(shares: dict[str, float]) -> str:
    return " ".join(f"{name} {100 * share:.0f} %" for name, share in shares.items())


@torch.no_grad()
def held_out_reading(
    text_encoder: nn.Module, heads: CaptionHeads, tokenizer: Any, language: str, count: int = 512
) -> dict[str, float]:
    """How often the heads read captions of templates training never used: the background, and
    every head at once. A text encoder that reads unseen phrasings lets the transformer draw them."""
    from cogserve.shapes.captions import describe

    rng = random.Random(SEED * 29)
    captions = [
        describe(data.sample_scene(rng, 1.0), rng, language, held_out=True)  # type: ignore[arg-type]
        for _ in range(count)
    ]
    device = device_of(text_encoder)
    ids = data.tokenize(tokenizer, [c.text for c in captions]).to(device)
    labels = torch.tensor([data.targets(c) for c in captions], device=device)
    hits = torch.stack(
        [lg.argmax(-1) == labels[:, i] for i, lg in enumerate(heads(text_states(text_encoder, ids)))], 1
    )
    return {"background": hits[:, 0].float().mean().item(), "all": hits.all(1).float().mean().item()}


# --- 3. transformer -------------------------------------------------------------------------------
def zero_init(transformer: nn.Module) -> None:
    """Start every block as the identity and the output at zero (the DiT recipe): much faster early
    training than diffusers' default init for a model trained from scratch."""
    for block in transformer.transformer_blocks:  # type: ignore[union-attr]
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    nn.init.zeros_(transformer.proj_out.weight)  # type: ignore[union-attr,arg-type]
    nn.init.zeros_(transformer.proj_out.bias)  # type: ignore[union-attr,arg-type]


#: The sizes the served model is asked for (BigModel's size rules: 512-2048 px a side).
SERVING_SIDES = (512, 2048)


def serving_sizes(rng: random.Random, height: int, width: int, count: int) -> torch.Tensor:
    """For each picture, a size it could be served at with the same aspect ratio, in pixels.

    The model trains at 112-256 px but serves at 512-2048 px, and the pipeline tells the transformer
    the served size (``original_size``/``target_size``) and shifts its noise levels by it; training
    with served sizes puts both where serving will find them.
    """
    low = SERVING_SIDES[0] / min(height, width)
    high = max(low, SERVING_SIDES[1] / max(height, width))
    sizes = []
    for _ in range(count):
        factor = low * (high / low) ** rng.random()  # log-uniform: 512-1024 px as often as 1-2k
        sizes.append([max(512, round(height * factor / 32) * 32), max(512, round(width * factor / 32) * 32)])
    return torch.tensor(sizes, dtype=torch.float32)


def sample_noise_levels(rng: torch.Generator, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps in 0..1, noise levels) as CogView4Pipeline pairs them at each served size.

    The pipeline hands the transformer the unshifted timestep ``t`` while the latents carry noise
    ``sigma = mu*t / (1 + (mu-1)*t)``, with ``mu`` from the image's token count (the scheduler's
    dynamic shift). Training on ``sigma`` alone, as a first run did, taught the model a timestep
    that meant less noise than it meets at 512 px and above. ``t`` is logit-normal with a quarter
    uniform, so the ends of the schedule (the sampler's first and last steps) are seen too.
    """
    from diffusers.pipelines.cogview4.pipeline_cogview4 import calculate_shift

    count = sizes.shape[0]
    t = torch.sigmoid(torch.randn(count, generator=rng))
    uniform = torch.rand(count, generator=rng)
    t = torch.where(torch.rand(count, generator=rng) < 0.25, uniform, t).clamp(1e-3, 1.0)
    tokens = sizes[:, 0] * sizes[:, 1] / (16 * 16)  # 8x VAE, 2x2 patches
    mu = torch.tensor([calculate_shift(int(n), 256, 0.25, 0.75) for n in tokens.tolist()])
    return t, mu * t / (1 + (mu - 1) * t)


def flow_loss(
    transformer: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    bank: data.LatentBank,
    buckets: tuple[tuple[int, int, float], ...],
    base_batch: int,
    step: int,
    shape_weight: float = 0.0,
    serving_padding: bool = False,
) -> torch.Tensor:
    """The rectified-flow (velocity) loss of step ``step``'s batch: a bucket, scenes with their
    latents from ``bank``, fresh captions, noise levels as the pipeline meets them at served sizes.

    ``shape_weight`` weighs the latent cells a shape touches, and the ring around them
    (``data.latent_mask``), ``1 + shape_weight`` times the rest (normalised, so the loss keeps its
    scale). The optimum is the same velocity everywhere; only where the model spends its capacity
    moves: a small star covers 2-4 of a 192² picture's 576 latent cells, so an unweighted loss is
    nearly all background.

    ``serving_padding`` pads each caption as the engine pads a prompt (``data.serving_groups``);
    otherwise the batch is padded to its longest caption, as the pipeline pads a batch."""
    rng = random.Random(SEED * 17 + step)
    noise_rng = torch.Generator().manual_seed(SEED * 19 + step)
    height, width = data.pick_bucket(rng, buckets)
    count = data.batch_size_for(height, width, base_batch)
    scenes, latents = bank.batch(rng, height, width, count)
    captions = [data.caption_for(rng, scene) for scene in scenes]
    device = device_of(transformer)
    size = serving_sizes(rng, height, width, count)
    timesteps, sigmas = sample_noise_levels(noise_rng, size)
    size, timesteps, sigmas = size.to(device), timesteps.to(device), sigmas.to(device)
    noise_on_device = torch.Generator(device).manual_seed(SEED * 23 + step)
    noise = torch.randn(latents.shape, generator=noise_on_device, device=device)
    s = sigmas.view(-1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    texts = [c.text for c in captions]
    # Padded as the engine pads each prompt alone: one transformer call per padded length. Else
    # as the pipeline pads a batch: to its longest caption.
    groups = (
        data.serving_groups(tokenizer, texts)
        if serving_padding
        else [(list(range(count)), data.tokenize(tokenizer, texts))]
    )
    errors, order = [], []
    for indices, ids in groups:
        with torch.no_grad():
            states = text_states(text_encoder, ids.to(device))
        pick = torch.tensor(indices, device=device)
        prediction = transformer(  # type: ignore[operator]
            hidden_states=noisy[pick],
            encoder_hidden_states=states,
            timestep=timesteps[pick] * 1000,
            original_size=size[pick],
            target_size=size[pick],
            crop_coords=torch.zeros(len(indices), 2, device=device),
            return_dict=False,
        )[0]
        errors.append((prediction - (noise[pick] - latents[pick])) ** 2)
        order += indices
    error = torch.cat(errors)
    if not shape_weight:
        return error.mean()
    masks = torch.stack([data.latent_mask(scenes[i], height, width) for i in order]).to(device)
    weights = 1.0 + shape_weight * masks
    return (weights * error).mean() / weights.mean()


#: From this step on the transformer trains only at the sizes the engine draws at
#: (``data.NATIVE_BUCKETS``), with the shapes' latent cells weighted up (``SHAPE_WEIGHT``). Before
#: it, steps 0-26,475 trained on ``data.BUCKETS`` (112-256 px, 30 % at 128², which is never served)
#: with an unweighted loss: the class of the shapes lagged far behind their colour and place. (The
#: committed checkpoint's steps 26,476-42,408 weighted the cells inside the shapes only, 5x; the
#: shapes came out too big, and the ring in ``data.latent_mask`` and 4x replaced that.)
NATIVE_FROM = 26_476
SHAPE_WEIGHT = 3.0
#: From this step on each caption is padded as the engine pads it (``data.PROMPT_TOKENS``). Before
#: it a batch was padded to its longest caption (32-64 tokens), so a caption's pad count depended on
#: its batch; served padded to x16 only, captions naming the background first lost it on about
#: half of their pictures (17,616 more steps drawing those templates 3x as often changed nothing).
SERVING_PADDING_FROM = 76_729


def train_transformer(
    transformer: nn.Module,
    ema: nn.Module,
    text_encoder: nn.Module,
    vae: nn.Module,
    tokenizer: Any,
    scale: float,
    work: Path,
    steps: int,
    buckets: tuple[tuple[int, int, float], ...] = data.BUCKETS,
    base_batch: int = data.BASE_BATCH,
    lr: float = 1e-3,
    bank_size: int = 8192,
    deadline: float | None = None,
    native_from: int = NATIVE_FROM,
    native_buckets: tuple[tuple[int, int, float], ...] = data.NATIVE_BUCKETS,
) -> None:
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    for module in (text_encoder, vae, ema):
        module.requires_grad_(False)
    bank = data.LatentBank(vae, scale, work, per_bucket=bank_size)
    # The EMA update as one fused call per step instead of one small kernel per parameter.
    ema_params, params = list(ema.parameters()), list(transformer.parameters())

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        native = step >= native_from
        loss = flow_loss(
            transformer,
            text_encoder,
            tokenizer,
            bank,
            native_buckets if native else buckets,
            base_batch,
            step,
            shape_weight=SHAPE_WEIGHT if native else 0.0,
            serving_padding=step >= SERVING_PADDING_FROM,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        return {"loss": loss.detach()}

    def prepare_banks(start: int) -> None:
        """The banks the remaining steps draw from (minutes on a CPU: only when steps remain)."""
        if start < native_from:
            bank.prepare(buckets)
        if steps > native_from:
            bank.prepare(native_buckets)
            log.info(
                "transformer: from step %d on, at the drawn sizes with the shapes weighted %.0fx",
                native_from,
                1 + SHAPE_WEIGHT,
            )

    transformer.train()
    run_loop(
        "transformer",
        work / "transformer.pt",
        steps,
        {"transformer": transformer, "ema": ema},
        optimizer,
        step_fn,
        base_lr=lr,
        warmup=300,
        deadline=deadline,
        setup=prepare_banks,
    )
    transformer.eval()


def ema_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).eval()
