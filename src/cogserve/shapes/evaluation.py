"""Held-out evaluation cases for the built-in model, and the tally of their verdicts.

Cases use only held-out caption templates, and some rows hold only scenes that never appeared in
training (every purple star; every large shape in the bottom-right cell). Captions name everything
(background, and each shape's colour, class, size and cell), so every attribute can be judged.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from cogserve.shapes.captions import Caption, Language, describe
from cogserve.shapes.judge import Verdict
from cogserve.shapes.world import HELD_OUT_SIZE_POSITION, Scene, Shape, place, sample_scene


@dataclass(frozen=True)
class Case:
    caption: Caption
    scene: Scene
    width: int
    height: int
    seed: int


def _held_out_combo(rng: random.Random, aspect: float) -> Scene:
    """One shape that training never drew: a purple star, or a large shape in the bottom-right."""
    while True:
        scene = sample_scene(rng, aspect, 1, allow_held_out=True)
        shape = scene.shapes[0]
        if rng.random() < 0.5:
            if "purple" in (scene.background,):
                continue
            placed: Shape | None = place(rng, "purple", "star", shape.size, shape.position, aspect)
        else:
            size, position = HELD_OUT_SIZE_POSITION
            placed = place(rng, shape.colour, shape.shape, size, position, aspect)  # type: ignore[arg-type]
        if placed is not None:
            return Scene(scene.background, (placed,))


def cases(
    count: int,
    width: int,
    height: int,
    *,
    shapes: int = 1,
    languages: Iterable[Language] = ("en",),
    held_out_scenes: bool = False,
    seed: int = 0,
) -> list[Case]:
    """``count`` cases at one size; captions from held-out templates, alternating ``languages``."""
    rng = random.Random(f"{seed}-{width}x{height}-{shapes}-{held_out_scenes}")
    langs = list(languages)
    result = []
    for i in range(count):
        aspect = width / height
        scene = _held_out_combo(rng, aspect) if held_out_scenes else sample_scene(rng, aspect, shapes)
        caption = describe(scene, rng, langs[i % len(langs)], held_out=True, keep=1.0)
        result.append(Case(caption, scene, width, height, seed=rng.randrange(2**31)))
    return result


@dataclass
class Tally:
    """Share of cases passing each check; a two-shape case passes a check only for both shapes."""

    cases: int = 0
    background: int = 0
    colour: int = 0
    shape: int = 0
    position: int = 0
    size: int = 0
    all_right: int = 0
    unclean: float = 0.0
    seconds: list[float] = field(default_factory=list)

    def add(self, verdict: Verdict, unclean: float, seconds: float) -> None:
        self.cases += 1
        self.background += verdict.background
        self.colour += all(verdict.colour)
        self.shape += all(verdict.shape)
        self.position += all(verdict.position)
        self.size += all(verdict.size)
        self.all_right += verdict.all_right
        self.unclean += unclean
        self.seconds.append(seconds)

    def shares(self) -> dict[str, float]:
        n = max(self.cases, 1)
        return {
            "background": 100 * self.background / n,
            "colour": 100 * self.colour / n,
            "shape": 100 * self.shape / n,
            "position": 100 * self.position / n,
            "size": 100 * self.size / n,
            "all": 100 * self.all_right / n,
            "unclean": 100 * self.unclean / n,
            "p50 s": statistics.median(self.seconds) if self.seconds else 0.0,
        }
