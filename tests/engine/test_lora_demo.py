"""The demo adapter shipped with the shapes model, ``night``, judged from the pixels it draws.

``night`` was trained (``python -m training.adapter``) on the shapes model to draw the scene a
prompt asks for on a black background. At scale 1 the background is black whatever the prompt
says and the shapes keep their colour; at scale 0 the picture is the model's own.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from training.adapter import NAME

from cogserve.engine.builtin import SHAPES_LORAS
from cogserve.engine.lora import LoraRegistry
from cogserve.engine.runner import PipelineEngine
from cogserve.engine.types import GenerationParams, generate_one
from cogserve.settings import ModelSettings, Settings
from cogserve.shapes.judge import judge
from tests.lora_helpers import TOLERANCE, differ

pytest.importorskip("peft")
pytestmark = pytest.mark.slow

SETTINGS = ModelSettings(builtin="shapes", device="cpu", warmup=False)
#: The model settings the app's service reads (its steps and guidance), as the engine has them.
SERVED = {"builtin", "device", "standard_steps", "hd_steps", "guidance_scale"}
#: (prompt, width, height, shape colour asked for)
CASES = [
    ("一个蓝色的圆形在左下角，黄色背景", 512, 512, "blue"),
    ("a large yellow star in the top-left corner on a white background", 512, 512, "yellow"),
    ("a green square at the bottom, pink background, minimalist", 768, 1344, "green"),
]


@pytest.fixture(scope="module")
def engine() -> PipelineEngine:
    engine = PipelineEngine(SETTINGS, Path("/nonexistent"))
    engine.load()
    registry = LoraRegistry.from_settings(Settings(model=SETTINGS))
    assert registry is not None and registry.names() == [NAME]
    engine.attach_loras(registry)
    return engine


def draw(
    engine: PipelineEngine, prompt: str, width: int, height: int, seed: int, scale: float | None
) -> Image.Image:
    loras = () if scale is None else ((NAME, scale),)
    steps, guidance = SETTINGS.standard_steps, SETTINGS.guidance_scale
    params = GenerationParams(prompt, width, height, steps, guidance, seed, loras)
    return generate_one(engine, params).image  # type: ignore[return-value]


@pytest.mark.parametrize(("prompt", "width", "height", "colour"), CASES, ids=[c[0][:20] for c in CASES])
def test_night_draws_the_scene_on_black_at_scale_1_and_the_models_own_at_scale_0(
    engine: PipelineEngine, prompt: str, width: int, height: int, colour: str
) -> None:
    kept = 0
    for seed in (1, 2):
        plain = draw(engine, prompt, width, height, seed, None)
        off = draw(engine, prompt, width, height, seed, 0.0)
        on = draw(engine, prompt, width, height, seed, 1.0)
        assert differ(np.asarray(off, np.int16), np.asarray(plain, np.int16)) <= TOLERANCE
        own, at_night = judge(plain), judge(on)
        assert own.background != "black", own
        assert at_night.background == "black", at_night
        kept += at_night.find(colour) is not None
    assert kept >= 1  # the shape stays, in its colour


def test_a_shapes_server_serves_it_with_no_lora_dir(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], engine: PipelineEngine
) -> None:
    assert SHAPES_LORAS.is_dir()
    client = make_client(make_settings(model=SETTINGS.model_dump(include=SERVED)), engine=engine)
    listed = {entry["id"]: entry for entry in client.get("/v1/models").json()["data"]}
    assert listed[NAME]["parent"] == "cogview-4" and listed[NAME]["lora"]["format"] == "peft"
    payload = {
        "model": "cogview-4",
        "prompt": CASES[0][0],
        "size": "512x512",
        "seed": 4,
        "response_format": "b64_json",
        "watermark_enabled": False,
    }
    response = client.post("/api/paas/v4/images/generations", json={**payload, "loras": [{"name": NAME}]})
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    assert judge(image).background == "black"
