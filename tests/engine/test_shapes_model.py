"""The shipped shapes model: what it draws, judged from its pixels, and how it behaves.

These run the weights in ``engine/weights/`` through the serving engine at the model's own step
defaults; the rest of the suite uses the tiny random model, where only the code path matters.

The model is still in training. The test of *what* it draws checks for real the prompts the shipped
checkpoint draws right; the others are strict expected failures until a checkpoint draws them
(``benchmarks/shapes_eval.py``, docs/builtin-model.md): when a better checkpoint makes one pass, the
suite goes red until its mark is removed. When all pass and the evaluation meets its targets, the
shapes model becomes the default.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cogserve.engine.builtin import SHAPES_NAME
from cogserve.engine.runner import PipelineEngine
from cogserve.engine.types import GenerationParams, generate_one
from cogserve.settings import ModelSettings
from cogserve.shapes.captions import Mention
from cogserve.shapes.judge import judge, verdict

pytestmark = pytest.mark.slow

SETTINGS = ModelSettings(builtin="shapes", device="cpu", warmup=False)
IN_TRAINING = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the shipped checkpoint is still in training (docs/builtin-model.md)",
)

#: (prompt, width, height, background, shapes asked for) — a user's sentences, not training captions.
#: The green square is drawn right since the transformer step 54,712 checkpoint; the next three
#: were added with the model's prompt padding (``prompt_tokens``), each right on 10-11 seeds of 12.
#: The Chinese triangle was right until that padding: its background is right on 12 seeds of 12
#: now, but the triangle comes out medium on most.
CASES = [
    pytest.param(
        "中间有一个绿色的圆形，黄色背景",
        512,
        512,
        "yellow",
        [Mention("green", "circle", None, "center")],
        id="zh green circle",
    ),
    pytest.param(
        "右边有一个蓝色的正方形，白色背景",
        768,
        1344,
        "white",
        [Mention("blue", "square", None, "right")],
        id="zh blue square 768x1344",
    ),
    pytest.param(
        "a blue square on the left, white background",
        1344,
        768,
        "white",
        [Mention("blue", "square", None, "left")],
        id="a blue square on the left 1344x768",
    ),
    pytest.param(
        "蓝色背景上，中间有一个大的橙色三角形",
        512,
        512,
        "blue",
        [Mention("orange", "triangle", "large", "center")],
        marks=IN_TRAINING,
        id="zh large orange triangle",
    ),
    pytest.param(
        "a green square at the bottom, pink background, minimalist",
        768,
        1344,
        "pink",
        [Mention("green", "square", None, "bottom")],
        id="a green square at the bottom 768x1344",
    ),
    pytest.param(
        "a red circle on a blue background",
        512,
        512,
        "blue",
        [Mention("red", "circle", None, None)],
        marks=IN_TRAINING,
        id="a red circle",
    ),
    pytest.param(
        "a large yellow star in the top-left corner on a black background",
        512,
        512,
        "black",
        [Mention("yellow", "star", "large", "top-left")],
        marks=IN_TRAINING,
        id="a large yellow star",
    ),
    pytest.param(
        "左边有一个白色的五角星，紫色背景",
        1344,
        768,
        "purple",
        [Mention("white", "star", None, "left")],
        marks=IN_TRAINING,
        id="zh white star 1344x768",
    ),
    pytest.param(
        "a small white square at the bottom right and a green circle at the top left, grey background",
        512,
        512,
        "grey",
        [Mention("white", "square", "small", "bottom-right"), Mention("green", "circle", None, "top-left")],
        marks=IN_TRAINING,
        id="two shapes",
    ),
]


@pytest.fixture(scope="module")
def engine() -> PipelineEngine:
    engine = PipelineEngine(SETTINGS, Path("/nonexistent"))
    engine.load()
    return engine


def draw(engine: PipelineEngine, prompt: str, width: int, height: int, seed: int) -> object:
    params = GenerationParams(prompt, width, height, SETTINGS.standard_steps, SETTINGS.guidance_scale, seed)
    return generate_one(engine, params).image


@pytest.mark.parametrize(("prompt", "width", "height", "background", "shapes"), CASES)
def test_draws_what_the_prompt_asks(
    engine: PipelineEngine, prompt: str, width: int, height: int, background: str, shapes: list[Mention]
) -> None:
    # Two seeds of three must be right: the evaluation measures the rates, this guards against rot.
    verdicts = []
    for seed in (1, 2, 3):
        judgement = judge(draw(engine, prompt, width, height, seed))  # type: ignore[arg-type]
        verdicts.append((verdict(judgement, background, tuple(shapes)).all_right, judgement))
    assert sum(ok for ok, _ in verdicts) >= 2, verdicts
    assert all(j.unclean < 0.05 for _, j in verdicts), verdicts


def test_same_seed_same_picture(engine: PipelineEngine) -> None:
    first = np.asarray(draw(engine, "a circle", 512, 512, 7))
    assert np.array_equal(first, np.asarray(draw(engine, "a circle", 512, 512, 7)))


def test_what_a_prompt_leaves_out_is_the_seeds_choice(engine: PipelineEngine) -> None:
    prompt = "a circle"  # colour, size, place and background are chosen by the seed
    scenes = set()
    for seed in range(7, 13):
        judgement = judge(draw(engine, prompt, 512, 512, seed))  # type: ignore[arg-type]
        scenes.add((judgement.background, *sorted((s.colour, s.position) for s in judgement.shapes)))
    # Six seeds, at least four different pictures as judged: colours and places, not just noise.
    # (Where the prompt names no background the model often picks grey: it is one colour of ten.)
    assert len(scenes) >= 4, scenes


#: Captions that name the background first, which the model misread on about half of its pictures
#: while prompts were padded only to a multiple of 16 tokens: (prompt, width, height, background,
#: shape colour).
BACKGROUND_FIRST = [
    ("Red background, a small blue circle in the center", 512, 512, "red", "blue"),
    ("背景为紫色，右边有一个白色的正方形", 512, 512, "purple", "white"),
    ("以粉色为背景，一个大的黑色五角星", 768, 1344, "pink", "black"),
    ("Black backdrop with a large orange star", 1344, 768, "black", "orange"),
    ("背景为灰色，左上角有一个红色圆形", 1024, 1024, "grey", "red"),
    ("Yellow background, a green triangle at the top", 512, 512, "yellow", "green"),
]


def test_a_background_named_first_is_drawn(engine: PipelineEngine) -> None:
    right = []
    for prompt, width, height, background, colour in BACKGROUND_FIRST:
        for seed in (1, 2):
            judgement = judge(draw(engine, prompt, width, height, seed))  # type: ignore[arg-type]
            right.append(judgement.background == background and judgement.find(colour) is not None)
    # 12 of 12 measured with the model's prompt padding, 6 of 12 without it
    assert sum(right) >= 10, right


@pytest.mark.parametrize("prompt", ["a photograph of an astronaut riding a horse", "一只可爱的小猫咪", ""])
def test_a_prompt_outside_the_world_still_gives_a_clean_picture(engine: PipelineEngine, prompt: str) -> None:
    for seed in (1, 2):
        judgement = judge(draw(engine, prompt, 512, 512, seed))  # type: ignore[arg-type]
        assert judgement.unclean < 0.05, (prompt, seed)  # no noise, no colours off the palette
        assert judgement.shapes, (prompt, seed)  # something from its world, not an empty canvas


def test_the_start_says_what_the_model_draws(caplog: pytest.LogCaptureFixture) -> None:
    engine = PipelineEngine(SETTINGS, Path("/nonexistent"))
    with caplog.at_level(logging.WARNING, logger="cogserve.engine.loader"):
        engine.load()
    assert engine.info.name == SHAPES_NAME and engine.info.builtin
    notice = next(r.message for r in caplog.records if "BUILT-IN SHAPES MODEL" in r.message)
    assert "STILL IN TRAINING" in notice and "circle" in notice


def test_the_watermarks_verify_on_its_flat_pictures(engine: PipelineEngine) -> None:
    from cogserve.safety.watermark import Watermarker, read_watermark

    marker = Watermarker()
    for seed, prompt in enumerate(["a white square on a white background", "a black star, black background"]):
        picture = draw(engine, prompt, 512, 512, seed)
        image_id = f"shapes{seed:02d}" + "x" * 24
        marked = marker.apply(picture, image_id)  # type: ignore[arg-type]
        info = read_watermark(marked)
        assert info is not None and info.image_id_prefix == image_id[:8]
        # The visible label went on too: the bottom-right corner changed.
        before, after = np.asarray(picture)[-40:, -120:], np.asarray(marked)[-40:, -120:]
        assert np.abs(before.astype(int) - after.astype(int)).max() > 60
