"""The dataset, generated on the fly and deterministic: batch ``k`` of a stage depends only on its seed.

Pictures are rendered exactly (``cogserve.shapes.world.render``) at several aspect ratios; each comes
with a caption in English or Chinese from the training templates. Held-out colour/shape and
size/position combinations and held-out templates never appear here.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cogserve.engine.prompt_tokens import left_pad
from cogserve.shapes.captions import Caption, describe, off_world
from cogserve.shapes.world import COLOURS, POSITIONS, SHAPES, SIZES, Scene, render, sample_scene

log = logging.getLogger("training")

#: (height, width) in pixels, with the share of steps each gets. Low resolutions carry most of the
#: training: CogView4's RoPE scales positions to the grid, so the layout carries over to 512-2048 px.
BUCKETS: tuple[tuple[int, int, float], ...] = (
    (128, 128, 0.30),
    (112, 192, 0.12),
    (192, 112, 0.12),
    (160, 160, 0.12),
    (128, 224, 0.06),
    (224, 128, 0.06),
    (192, 192, 0.10),
    (256, 256, 0.12),
)
#: The sizes the engine draws at (``NATIVE_PIXELS`` in each served aspect ratio: 512² and 1024² are
#: drawn at 192², 768x1344 at 256x144, 864x1152 at 224x160...), where the transformer's last steps
#: train (``training.stages.NATIVE_FROM``): the model only ever serves these.
NATIVE_BUCKETS: tuple[tuple[int, int, float], ...] = (
    (192, 192, 0.35),
    (144, 256, 0.15),
    (256, 144, 0.15),
    (160, 224, 0.08),
    (224, 160, 0.08),
    (160, 160, 0.07),
    (224, 224, 0.06),
    (128, 128, 0.06),
)
#: The side of the square the served model draws at before the engine enlarges the picture
#: (``cogserve.json``'s ``native_pixels`` in the exported folder is its square): a 512 px latent grid
#: is four times the sides training shows, and a model this small does not carry its shapes over
#: that far. ``python -m training.train --draw-side N`` trains and exports another (``native_buckets``).
NATIVE_SIDE = 192
NATIVE_PIXELS = NATIVE_SIDE * NATIVE_SIDE


def native_buckets(
    side: int, buckets: tuple[tuple[int, int, float], ...] = NATIVE_BUCKETS
) -> tuple[tuple[int, int, float], ...]:
    """``buckets`` (sizes for a model that draws at ``NATIVE_SIDE``²) for one that draws at about
    ``side``² instead: each size scaled by ``side / NATIVE_SIDE`` and rounded to a multiple of 16
    (8 px a latent cell, 2 cells a patch), each share kept."""

    def scaled(length: int) -> int:
        return max(16, int(length * side / NATIVE_SIDE / 16 + 0.5) * 16)

    return tuple((scaled(height), scaled(width), share) for height, width, share in buckets)


#: Prompts are left-padded to at least this many tokens at serving (``cogserve.json``'s
#: ``prompt_tokens``), and from ``stages.SERVING_PADDING_FROM`` on the transformer trains on its
#: captions padded exactly so. The text encoder reads the pad tokens (the pipeline gives it no
#: attention mask), so the padding changes a caption's text states, most of all its first words'.
PROMPT_TOKENS = 32
#: Images per step at 128x128; other buckets keep the token count about the same.
BASE_BATCH = 32


def pick_bucket(rng: random.Random, buckets: tuple[tuple[int, int, float], ...] = BUCKETS) -> tuple[int, int]:
    height, width, _ = rng.choices(buckets, weights=[b[2] for b in buckets])[0]
    return height, width


def batch_size_for(height: int, width: int, base: int = BASE_BATCH) -> int:
    return max(2, round(base * 128 * 128 / (height * width)))


def to_tensor(images: list[object]) -> torch.Tensor:
    """PIL pictures -> a (B, 3, H, W) float tensor in [-1, 1], as the VAE takes them."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def pictures(rng: random.Random, count: int, height: int, width: int) -> tuple[list[Scene], torch.Tensor]:
    scenes = [sample_scene(rng, width / height) for _ in range(count)]
    return scenes, to_tensor([render(scene, width, height) for scene in scenes])


@lru_cache(maxsize=1 << 16)
def latent_mask(scene: Scene, height: int, width: int) -> torch.Tensor:
    """(1, height/8, width/8): 1 on the latent cells (8x8 pixels each) a shape touches and on the
    cells around them, else 0.

    The ring of background cells around each shape weighs as much as the shape: weighting only the
    cells inside made the model's mistakes cheaper outside the outline, and it drew the shapes too
    big (size right on 71 % of one-shape English prompts instead of 79 %). From the scene's geometry
    alone (every shape white on black), so a restyled scene has the same mask. Rendered at a
    quarter of the size, 2x supersampled, then any-of-2x2 and a 3x3 dilation: cheap enough per step.
    """
    silhouette = Scene("black", tuple(replace(shape, colour="white") for shape in scene.shapes))
    picture = np.asarray(render(silhouette, width // 4, height // 4, supersample=2), dtype=np.uint8)
    covered = torch.from_numpy(picture[..., 0] > 40).float()[None, None]
    return F.max_pool2d(F.max_pool2d(covered, 2), 3, stride=1, padding=1)[0]


def crops(rng: random.Random, count: int, side: int) -> torch.Tensor:
    """Square crops of pictures rendered at 128-384 px: the VAE sees edges and flat areas at the
    scales it meets at 512-2048 px, for a fraction of a whole picture's cost."""
    images = []
    for _ in range(count):
        height, width = rng.randrange(128, 385, 16), rng.randrange(128, 385, 16)
        picture = render(sample_scene(rng, width / height), width, height)
        left, top = rng.randrange(width - side + 1), rng.randrange(height - side + 1)
        images.append(picture.crop((left, top, left + side, top + side)))
    return to_tensor(images)


# --- captions and the text encoder's auxiliary targets -----------------------------------------
UNSAID = -1  # "the caption does not say": mapped to the last class of each head


@dataclass(frozen=True)
class Head:
    name: str
    classes: int


#: background, shape count, then colour/shape/size/position of the first and second shape named.
HEADS: tuple[Head, ...] = (
    Head("background", len(COLOURS) + 1),
    Head("count", 3),
    *(
        Head(f"{attribute}{slot}", classes + 1)
        for slot in (1, 2)
        for attribute, classes in (
            ("colour", len(COLOURS)),
            ("shape", len(SHAPES)),
            ("size", len(SIZES)),
            ("position", len(POSITIONS)),
        )
    ),
)


def targets(caption: Caption) -> list[int]:
    """One class per head; the last class of a head means "not said" (or "no such shape")."""

    def index(options: tuple[str, ...], value: str | None) -> int:
        return len(options) if value is None else options.index(value)

    labels = [index(COLOURS, caption.background), len(caption.mentions) - 1 if caption.mentions else 2]
    for slot in range(2):
        m = caption.mentions[slot] if slot < len(caption.mentions) else None
        labels += [
            index(COLOURS, m.colour if m else None),
            index(SHAPES, m.shape if m else None),  # type: ignore[arg-type]
            index(SIZES, m.size if m else None),  # type: ignore[arg-type]
            index(POSITIONS, m.position if m else None),
        ]
    return labels


def caption_for(rng: random.Random, scene: Scene, *, unconditional: float = 0.1) -> Caption:
    """A training caption: ``unconditional`` of them empty (for classifier-free guidance), a few
    outside the world, the rest from the training templates, 55 % English."""
    language = "en" if rng.random() < 0.55 else "zh"
    roll = rng.random()
    if roll < unconditional:
        return Caption("", language, -1, None, ())
    if roll < unconditional + 0.03:
        return off_world(rng, language)
    return describe(scene, rng, language, keep=rng.choice((0.6, 0.85, 1.0, 1.0)))


def tokenize(tokenizer: object, texts: list[str], extra_pad: int = 0, min_tokens: int = 0) -> torch.Tensor:
    """Token ids exactly as CogView4Pipeline makes them: left-padded to the longest, then to x16
    (with ``min_tokens``: to at least that many first, as the engine pads for the shapes model)."""
    ids = tokenizer(texts, padding="longest", return_tensors="pt").input_ids  # type: ignore[operator]
    pad_id = tokenizer.pad_token_id  # type: ignore[attr-defined]
    return left_pad(ids, pad_id, max(ids.shape[1] + extra_pad, min_tokens))  # type: ignore[no-any-return]


def serving_groups(tokenizer: object, texts: list[str]) -> list[tuple[list[int], torch.Tensor]]:
    """The captions' token ids as the engine pads each alone (``PROMPT_TOKENS`` at least, then to
    x16), in groups of one length: each group's indices into ``texts``, and its ids."""
    by_length: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for index, text in enumerate(texts):
        ids = tokenize(tokenizer, [text], min_tokens=PROMPT_TOKENS)
        by_length.setdefault(ids.shape[1], []).append((index, ids))
    return [
        ([index for index, _ in group], torch.cat([ids for _, ids in group]))
        for _, group in sorted(by_length.items())
    ]


def _render_array(job: tuple[Scene, int, int]) -> np.ndarray:
    scene, width, height = job
    return np.asarray(render(scene, width, height), dtype=np.uint8)


class LatentBank:
    """Scenes with their VAE latents, encoded once per bucket and kept on disk beside the checkpoints.

    The transformer stage draws its pictures from here (captions are still drawn afresh each time),
    which takes rendering and the VAE encoder out of every step. Pictures are rendered by a pool of
    processes (one per core) and encoded on the VAE's device; the latents stay on that device.
    ``restyle`` changes each scene before it is drawn (a LoRA adapter's style), while its captions
    still describe the scene as sampled; such banks are kept in files named ``name``.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        scale: float,
        folder: Path,
        per_bucket: int,
        *,
        restyle: Callable[[Scene], Scene] | None = None,
        name: str = "latents",
    ) -> None:
        self._vae, self._scale, self._folder, self._per_bucket = vae, scale, folder, per_bucket
        self._restyle, self._name = restyle, name
        self._device = next(vae.parameters()).device
        self._banks: dict[tuple[int, int], tuple[list[Scene], torch.Tensor]] = {}

    def _bank(self, height: int, width: int) -> tuple[list[Scene], torch.Tensor]:
        key = (height, width)
        if key in self._banks:
            return self._banks[key]
        count = self._per_bucket * batch_size_for(height, width) // BASE_BATCH
        path = self._folder / f"{self._name}-{height}x{width}-{count}.pt"
        started = time.perf_counter()
        if path.is_file():
            saved = torch.load(path, weights_only=False, map_location="cpu")
            scenes, latents = saved["scenes"], saved["latents"]
        else:
            scenes, latents = self._encode(height, width, count)
            tmp = path.with_suffix(".tmp")
            torch.save({"scenes": scenes, "latents": latents}, tmp)
            os.replace(tmp, path)
        self._banks[key] = (scenes, latents.to(self._device))
        seconds = time.perf_counter() - started
        log.info("latent bank %dx%d: %d scenes in %.0f s", height, width, count, seconds)
        return self._banks[key]

    def _encode(self, height: int, width: int, count: int) -> tuple[list[Scene], torch.Tensor]:
        rng = random.Random(f"bank-{height}x{width}")
        scenes = [sample_scene(rng, width / height) for _ in range(count)]
        drawn = scenes if self._restyle is None else [self._restyle(scene) for scene in scenes]
        jobs = [(scene, width, height) for scene in drawn]
        chunks, pending = [], []
        # fork: the workers only render (no torch), so inheriting the parent's state is safe and fast.
        with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool, torch.no_grad():
            for array in pool.imap(_render_array, jobs, chunksize=32):
                pending.append(array)
                if len(pending) == 256:
                    chunks.append(self._encode_arrays(pending))
                    pending = []
            if pending:
                chunks.append(self._encode_arrays(pending))
        return scenes, torch.cat(chunks)

    def _encode_arrays(self, arrays: list[np.ndarray]) -> torch.Tensor:
        images = torch.from_numpy(np.stack(arrays)).to(self._device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return (self._vae.encode(images).latent_dist.mean * self._scale).cpu()  # type: ignore[operator]

    def prepare(self, buckets: tuple[tuple[int, int, float], ...]) -> None:
        """Load or build every bucket's bank before training (the render pool forks only here)."""
        for height, width, _ in buckets:
            self._bank(height, width)

    def batch(
        self, rng: random.Random, height: int, width: int, count: int
    ) -> tuple[list[Scene], torch.Tensor]:
        scenes, latents = self._bank(height, width)
        picks = [rng.randrange(len(scenes)) for _ in range(count)]
        index = torch.tensor(picks, device=latents.device)
        return [scenes[i] for i in picks], latents[index]
