"""The training stages' own machinery: time budgets, checkpoints, the decoder stage's weighting."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from training import data, stages


def _loop(path: Path, total: int, budget: float | None, setups: list[int]) -> nn.Linear:
    """A toy stage of ``total`` steps of 0.1 s each, with ``budget`` seconds from its start."""
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(step: int) -> dict[str, float]:
        time.sleep(0.1)
        loss = model(torch.ones(1, 2)).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    modules: dict[str, nn.Module] = {"model": model}
    setup = lambda start: setups.append(1)  # noqa: E731
    # The deadline is taken here: building the first optimizer of a process can take a second.
    deadline = None if budget is None else time.monotonic() + budget
    stages.run_loop("toy", path, total, modules, optimizer, step_fn, deadline=deadline, setup=setup)
    return model


def test_a_budget_that_runs_out_mid_stage_checkpoints_there_and_the_next_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, setups = tmp_path / "toy.pt", []
    with caplog.at_level(logging.INFO, logger="training"):
        _loop(path, 1000, 1.0, setups)
    stopped = torch.load(path, weights_only=False)["step"]
    assert 2 <= stopped < 1000
    assert f"toy: out of time at step {stopped}" in caplog.text

    with caplog.at_level(logging.INFO, logger="training"):
        model = _loop(path, stopped + 2, None, setups)
    assert torch.load(path, weights_only=False)["step"] == stopped + 2
    assert f"toy: resuming at step {stopped} of {stopped + 2}" in caplog.text
    assert setups == [1, 1]
    assert not torch.equal(model.weight, nn.Linear(2, 1).weight)


def test_a_spent_budget_runs_nothing_not_even_the_setup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, setups = tmp_path / "toy.pt", []
    _loop(path, 2, None, setups)
    with caplog.at_level(logging.INFO, logger="training"):
        _loop(path, 10, -1.0, setups)
    assert torch.load(path, weights_only=False)["step"] == 2
    assert "toy: no time left; stays at step 2" in caplog.text
    assert setups == [1]  # the first run's only: a latent bank is not built for no steps


def test_the_decoder_stage_weights_shapes_above_the_background() -> None:
    rng = random.Random(3)
    scenes, images = data.pictures(rng, 4, 64, 64)
    weights = stages.shape_weights(scenes, images, weight=4.0)
    assert weights.shape == (4, 1, 64, 64)
    assert set(weights.unique().tolist()) <= {1.0, 5.0}
    for scene, picture_weights in zip(scenes, weights, strict=True):
        covered = (picture_weights == 5.0).float().mean().item()
        # The shapes' own share of the picture (plus anti-aliased edges), and nothing else.
        assert 0.001 < covered < 0.5, scene
        assert picture_weights[0, 0, 0] == 1.0 or picture_weights[0, -1, -1] == 1.0


def test_decoder_batches_keep_about_the_same_pixel_count_at_every_size() -> None:
    counts = set()
    for seed in range(30):
        _, images = stages.decoder_batch(random.Random(seed))
        counts.add(images.shape[0] * images.shape[2] * images.shape[3])
        assert images.shape[2] % 16 == 0 and images.shape[3] % 16 == 0
    assert max(counts) / min(counts) < 1.6


def test_the_latent_mask_covers_the_shapes_cells_whatever_their_colours() -> None:
    from dataclasses import replace

    from cogserve.shapes.world import Scene, Shape

    star = Shape("red", "star", "small", "top-left", 0.15, 0.2, 0.2)
    circle = Shape("blue", "circle", "large", "center", 0.5, 0.5, 0.5)
    scene = Scene("white", (star, circle))
    mask = data.latent_mask(scene, 192, 256)
    assert mask.shape == (1, 24, 32)  # the VAE's 8x grid
    # the large circle spans about 0.5 * 192 / 8 = 12 cells, 14 with the ring around it, so about
    # pi/4 * 14² of them, and the small star a few more; the cells far from both stay 0
    assert 150 <= mask.sum() <= 260
    assert mask[0, 12, 16] == 1 and mask[0, 5, 6] == 1
    assert mask[0, 23, 0] == 0 and mask[0, 0, 31] == 0 and mask[0, 12, 31] == 0
    # from the geometry only: a restyled scene (another palette) gets the same mask
    night = Scene("black", tuple(replace(s, colour="yellow") for s in scene.shapes))
    assert torch.equal(data.latent_mask(night, 192, 256), mask)
    assert data.latent_mask(Scene("green", ()), 192, 256).sum() == 0


def test_serving_groups_pad_each_caption_as_the_engine_pads_it_alone() -> None:
    from transformers import AutoTokenizer

    from cogserve.engine.builtin import SHAPES_PATH

    tokenizer = AutoTokenizer.from_pretrained(SHAPES_PATH / "tokenizer")
    texts = ["a circle", "", "蓝色背景上，中间有一个大的橙色三角形", "a red circle, " * 12, "a blue star"]
    groups = data.serving_groups(tokenizer, texts)
    assert sorted(i for indices, _ in groups for i in indices) == list(range(len(texts)))
    for indices, ids in groups:
        for i, row in zip(indices, ids.tolist(), strict=True):
            own = tokenizer(texts[i]).input_ids
            length = max(len(own), data.PROMPT_TOKENS)
            length += -length % 16
            assert row == [tokenizer.pad_token_id] * (length - len(own)) + own
    # the short captions share one call; the long one, padded less than the batch's longest, its own
    assert [len(indices) for indices, _ in groups] == [4, 1]


def test_a_larger_draw_side_scales_every_drawn_size_and_keeps_the_default_as_is() -> None:
    assert data.native_buckets(data.NATIVE_SIDE) == data.NATIVE_BUCKETS
    scaled = data.native_buckets(224)
    assert [share for *_, share in scaled] == [share for *_, share in data.NATIVE_BUCKETS]
    for (height, width, _), (base_height, base_width, _) in zip(scaled, data.NATIVE_BUCKETS, strict=True):
        assert height % 16 == 0 and width % 16 == 0  # whole patches of latent cells
        assert height > base_height and width > base_width
        assert abs(height / width - base_height / base_width) < 0.1 * base_height / base_width
    assert (224, 224, data.NATIVE_BUCKETS[0][2]) in scaled  # 192² becomes 224² exactly


def test_the_adapter_trains_at_the_sizes_its_base_model_draws_at(tmp_path: Path) -> None:
    from cogserve.engine.builtin import SHAPES_PATH
    from training import adapter

    assert adapter.buckets_for(SHAPES_PATH) == adapter.BUCKETS  # the shipped model draws at 192²
    assert adapter.buckets_for(tmp_path) == adapter.BUCKETS  # a folder without serving hints
    (tmp_path / "cogserve.json").write_text('{"native_pixels": 50176}', encoding="utf-8")
    assert max(height for height, _, _ in adapter.buckets_for(tmp_path)) == 224
