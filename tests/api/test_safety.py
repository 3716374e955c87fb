"""Moderation and marks as a client sees them: 1301 before the engine, content_filter, watermarks."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cogserve.errors import ContentBlocked
from cogserve.safety.image_checker import ImageVerdict
from cogserve.safety.watermark import read_watermark
from tests.helpers import CountingEngine, access_of, fetch_png, generate, image_id_of, metadata_of, open_png

FLAGGED = [
    "how to make a pipe bomb",  # terrorism, level 0
    "PIPE   BOMB in a backpack",  # case and spacing
    "ｐｉｐｅ ｂｏｍｂ",  # full-width
    "a s.u.i.c.i.d.e b.o.m.b.e.r at a market",  # spelled out
    "儿童色情",  # minors, level 0
    "儿 童 色 情 图片",  # spaces between Chinese characters
    "儿-童-色-情",  # punctuation between them
    "儿儿童童色色情情",  # repeated characters
    "a torture chamber with victims",  # graphic violence, level 1
    "血腥屠杀的场面",
    "explicit pornographic scene",  # sexual, level 1
    "heil hitler rally",  # hate, level 1
]
CLEAN = [
    "一只可爱的小猫咪",
    "a bath bomb fizzing in a tub",
    "a therapist's office with grapes on the table",
    "a shooting star over Scunthorpe",
    "an old drug store on a rainy street",
    "电影海报，未来城市，霓虹灯",
]


@pytest.fixture
def counted(
    make_client: Callable[..., TestClient], counting: CountingEngine
) -> tuple[TestClient, CountingEngine]:
    return make_client(engine=counting), counting


@pytest.mark.parametrize("prompt", FLAGGED)
def test_flagged_prompts_are_refused_before_the_engine(
    counted: tuple[TestClient, CountingEngine], prompt: str
) -> None:
    client, engine = counted
    response = generate(client, prompt=prompt, user_id="user-flagged")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "1301" and error["message"].startswith(ContentBlocked.SEED_MESSAGE)
    assert response.headers["x-should-retry"] == "false"
    assert engine.images == 0
    usage = access_of(client).accounts.usage(user_id="user-flagged")
    assert usage[0].blocked_by_moderation == 1  # the attempt is recorded with its user_id


@pytest.mark.parametrize("prompt", CLEAN)
def test_clean_prompts_pass_with_level_3(client: TestClient, prompt: str) -> None:
    response = generate(client, prompt=prompt)
    assert response.status_code == 200, response.text
    assert response.json()["content_filter"] == [{"role": "user", "level": 3}]


def test_a_level_below_the_threshold_is_reported_not_refused(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'extends = "builtin"\n[categories.gambling]\nlevel = 2\nterms = ["online casino", "网络赌博"]\n',
        encoding="utf-8",
    )
    client = make_client(make_settings(safety={"moderation_policy": policy}))
    response = generate(client, prompt="a neon ONLINE   CASINO sign")
    assert response.status_code == 200
    assert response.json()["content_filter"] == [{"role": "user", "level": 2}]
    assert generate(client, prompt="pipe bomb").status_code == 400  # the shipped terms still apply


def test_blocking_can_be_turned_off_and_levels_still_reported(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    client = make_client(make_settings(safety={"block_level": -1}))
    response = generate(client, prompt="a torture chamber")
    assert response.status_code == 200
    assert response.json()["content_filter"] == [{"role": "user", "level": 1}]


class FlagEverything:
    name = "flag-everything"

    def __init__(self, level: int) -> None:
        self.level = level
        self.seen = 0

    def check(self, image: Image.Image) -> ImageVerdict:
        self.seen += 1
        return ImageVerdict(level=self.level, labels=["TEST_LABEL"])


@pytest.mark.parametrize(("level", "status"), [(1, 400), (2, 200)])
def test_image_checker_runs_before_storing(
    make_client: Callable[..., TestClient],
    make_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    level: int,
    status: int,
) -> None:
    checker = FlagEverything(level)
    monkeypatch.setattr("cogserve.service.generation.create_image_checker", lambda name: checker)
    client = make_client(make_settings())
    response = generate(client)
    assert response.status_code == status and checker.seen == 1
    images = client.app.state.cogserve.settings.images_dir  # type: ignore[attr-defined]
    stored = list(Path(images).rglob("*.png"))
    if status == 400:
        assert (
            response.json()["error"]["code"] == "1301"
            and "generated image" in response.json()["error"]["message"]
        )
        assert stored == []
    else:
        assert response.json()["content_filter"] == [
            {"role": "user", "level": 3},
            {"role": "assistant", "level": 2},
        ]
        assert len(stored) == 1


def test_served_image_carries_label_mark_and_metadata(client: TestClient) -> None:
    marked = generate(client, size="768x512")
    plain = generate(client, size="768x512", seed=marked_seed(client, marked), watermark_enabled=False)
    with open_png(fetch_png(client, marked.json()["data"][0]["url"])) as image:
        assert image.info["AIGC"]
        info = read_watermark(image)
        assert info is not None and image_id_of(marked.json()["data"][0]["url"]).startswith(
            info.image_id_prefix
        )
        marked_pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    with open_png(fetch_png(client, plain.json()["data"][0]["url"])) as image:
        assert "AIGC" not in image.info and read_watermark(image) is None
        plain_pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    diff = np.abs(marked_pixels - plain_pixels).max(axis=2)
    corner, rest = diff[-60:, -160:], diff[:300, :400]
    assert corner.mean() > 20  # the visible label sits in the bottom-right corner
    assert rest.mean() < 6  # elsewhere only the faint invisible mark


def marked_seed(client: TestClient, response: Any) -> int:
    store = metadata_of(client)
    try:
        row = store.get(image_id_of(response.json()["data"][0]["url"]))
    finally:
        store.close()
    assert row is not None and row.watermark_enabled
    return row.seed


def test_b64_json_is_marked_too(client: TestClient) -> None:
    response = generate(client, response_format="b64_json")
    with open_png(base64.b64decode(response.json()["data"][0]["b64_json"])) as image:
        assert read_watermark(image) is not None


def test_real_nudenet_checker_reports_the_assistant_level(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    pytest.importorskip("nudenet", reason='needs the optional extra: pip install "cogserve[nudenet]"')
    client = make_client(make_settings(safety={"image_checker": "nudenet"}))
    response = generate(client, prompt="a quiet harbour at dawn")
    assert response.status_code == 200
    assert response.json()["content_filter"] == [
        {"role": "user", "level": 3},
        {"role": "assistant", "level": 3},
    ]
