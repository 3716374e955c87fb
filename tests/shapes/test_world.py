"""The shapes world: rendering, captions and the pixel judge agree with each other."""

from __future__ import annotations

import random

import pytest

from cogserve.shapes.captions import HELD_OUT_TEMPLATES, TEMPLATES, describe, full_mention
from cogserve.shapes.evaluation import cases
from cogserve.shapes.judge import judge, verdict
from cogserve.shapes.world import (
    PALETTE,
    SIZE_RANGES,
    Scene,
    Shape,
    is_held_out,
    place,
    render,
    sample_scene,
)


@pytest.mark.parametrize(("width", "height"), [(512, 512), (768, 1344), (1344, 768), (256, 256)])
def test_the_judge_reads_exact_renders_right(width: int, height: int) -> None:
    rng = random.Random(f"{width}x{height}")
    for _ in range(25):
        scene = sample_scene(rng, width / height, allow_held_out=True)
        judgement = judge(render(scene, width, height, supersample=2))
        result = verdict(judgement, scene.background, tuple(full_mention(s) for s in scene.shapes))
        assert result.all_right, (scene, judgement)
        assert judgement.unclean < 0.001


def test_the_judge_notices_a_wrong_picture() -> None:
    rng = random.Random(3)
    scene = sample_scene(rng, 1.0, 1)
    shape = scene.shapes[0]
    other = next(c for c in PALETTE if c not in (shape.colour, scene.background))
    judgement = judge(render(scene, 256, 256))
    wrong_colour = verdict(
        judgement, scene.background, (full_mention(shape).__class__(other, shape.shape, None, None),)
    )
    assert not wrong_colour.all_right
    wrong_background = verdict(judgement, other, (full_mention(shape),))
    assert not wrong_background.background


def test_noise_is_unclean() -> None:
    import numpy as np
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    assert judge(noise).unclean > 0.3


def test_sizes_and_cells_are_what_the_words_say() -> None:
    rng = random.Random(5)
    for size, (low, high) in SIZE_RANGES.items():
        for aspect in (1.0, 0.57, 1.75):
            shape = place(rng, "red", "star", size, "bottom-right", aspect)  # type: ignore[arg-type]
            assert shape is not None
            assert low <= shape.extent <= high
            assert 2 / 3 < shape.cx < 1 and 2 / 3 < shape.cy < 1


def test_training_scenes_never_hold_the_held_out_combinations() -> None:
    rng = random.Random(9)
    for _ in range(2000):
        scene = sample_scene(rng, rng.choice((1.0, 0.6, 1.7)))
        assert not any(is_held_out(s) for s in scene.shapes)
        colours = [s.colour for s in scene.shapes]
        assert scene.background not in colours and len(set(colours)) == len(colours)


def test_captions_use_the_asked_template_set_and_both_languages() -> None:
    rng = random.Random(11)
    scene = Scene("blue", (place(rng, "red", "circle", "large", "center", 1.0),))  # type: ignore[arg-type]
    for language in ("en", "zh"):
        seen = {describe(scene, rng, language).template for _ in range(300)}  # type: ignore[arg-type]
        held = {describe(scene, rng, language, held_out=True).template for _ in range(300)}  # type: ignore[arg-type]
        assert seen == set(range(len(TEMPLATES[language]))) - HELD_OUT_TEMPLATES[language]  # type: ignore[index]
        assert held == HELD_OUT_TEMPLATES[language]  # type: ignore[index]
    chinese = describe(scene, random.Random(1), "zh", keep=1.0).text
    assert "红" in chinese and "蓝" in chinese


def test_evaluation_cases_are_deterministic_and_held_out() -> None:
    first = cases(10, 512, 512, languages=("en", "zh"), held_out_scenes=True)
    assert first == cases(10, 512, 512, languages=("en", "zh"), held_out_scenes=True)
    assert all(is_held_out(case.scene.shapes[0]) for case in first)
    assert {case.caption.language for case in first} == {"en", "zh"}


@pytest.mark.parametrize("kind", ["star", "triangle", "circle", "square"])
def test_the_judge_reads_a_shape_with_blunted_corners_as_that_shape(kind: str) -> None:
    """A model, or its VAE, gives a medium star back with rounded points: it still reads as a star
    (a concave outline with five points, as a person reads it), and rounded convex shapes do not
    become stars."""
    from PIL import ImageFilter

    shape = Shape("white", kind, "medium", "center", 0.28, 0.5, 0.5)  # type: ignore[arg-type]
    scene = Scene("blue", (shape,))
    # Drawn at 96 px, blurred, enlarged: about what the 192 px VAE round trip does to a star.
    blunted = render(scene, 96, 96).filter(ImageFilter.GaussianBlur(1.5)).resize((512, 512))
    found = judge(blunted).find("white")
    assert found is not None and found.shape == kind, found
    if kind == "star":
        assert found.fill > 0.42  # a triangle's fill, by the bounding box alone
