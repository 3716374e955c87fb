"""LoRA adapters through the HTTP API: the loras field (BigModel sync and async, OpenAI), model=adapter
on /v1, the listing, errors and limits, key permissions, metrics, and isolation under batching.

Isolation tolerance: an image batched with others may differ from the same image made alone by float
reordering in the batched matmuls; at most ``TOLERANCE`` (2) levels of 255 per channel. An adapter
moves the tiny model's pixels by far more (checked), so any leak between requests would show.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cogserve.engine.runner import PipelineEngine
from cogserve.settings import ModelSettings
from tests.api.test_jobs import finished, wait_for
from tests.helpers import IMAGES, access_of, bearer
from tests.lora_helpers import TOLERANCE, make

pytest.importorskip("peft")

ASYNC = "/api/paas/v4/async/images/generations"
V1_IMAGES = "/v1/images/generations"


@pytest.fixture(scope="module")
def lora_dir(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("api-loras")
    make(models_dir, folder / "ink", seed=1)
    make(models_dir, folder / "wash", seed=2, rank=8)
    return folder


@pytest.fixture(scope="module")
def lora_engine(models_dir: Path) -> PipelineEngine:
    """Its own engine: each app attaches its adapters to the engine it is given."""
    engine = PipelineEngine(ModelSettings(builtin_dir=models_dir, builtin="tiny-random"), models_dir)
    engine.load()
    return engine


@pytest.fixture
def lora_client(
    make_client: Callable[..., TestClient],
    make_settings: Callable[..., Any],
    lora_engine: PipelineEngine,
    lora_dir: Path,
) -> TestClient:
    settings = make_settings(
        lora={"dir": lora_dir}, scheduler={"max_batch_size": 4, "max_batch_wait_ms": 400.0}
    )
    return make_client(settings, engine=lora_engine)


def body(loras: list[dict[str, Any]] | None = None, seed: int = 3, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": "cogview-4",
        "prompt": "a paper boat",
        "size": "512x512",
        "seed": seed,
        "response_format": "b64_json",
        "watermark_enabled": False,  # the invisible mark differs per image: compare the pictures
        **extra,
    }
    if loras is not None:
        payload["loras"] = loras
    return payload


def picture(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    return str(response.json()["error"]["message"])


INK = [{"name": "ink", "scale": 1.0}]
WASH = [{"name": "wash", "scale": 0.8}]
BOTH = [{"name": "wash", "scale": 0.8}, {"name": "ink"}]


@pytest.mark.slow
def test_batched_requests_get_their_own_adapters_and_nothing_leaks(lora_client: TestClient) -> None:
    # none -> A -> B -> A+B -> none, two seeds each: first one at a time, then all at once.
    sequence = [None, INK, WASH, BOTH, None]
    bodies = [body(loras, seed=seed) for loras in sequence for seed in (3, 4)]
    alone = [picture(lora_client.post(IMAGES, json=b)) for b in bodies]
    assert np.abs(alone[2] - alone[0]).max() > 20  # an adapter visibly changes the picture
    assert np.abs(alone[6] - alone[2]).max() > 20  # and so does adding another
    assert np.array_equal(alone[8], alone[0])  # none after adapters: the base model exactly
    before = lora_client.get("/readyz").json()

    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: picture(lora_client.post(IMAGES, json=b)), bodies))

    after = lora_client.get("/readyz").json()
    calls, images = after["batches"] - before["batches"], after["batched_images"] - before["batched_images"]
    assert images == len(bodies) and calls < len(bodies)  # some of them were batched
    for index, (mine, reference) in enumerate(zip(together, alone, strict=True)):
        assert np.abs(mine - reference).max() <= TOLERANCE, f"request {index} ({bodies[index].get('loras')})"


def test_the_order_of_adapters_does_not_matter(lora_client: TestClient) -> None:
    one = picture(lora_client.post(IMAGES, json=body(BOTH)))
    other = picture(lora_client.post(IMAGES, json=body(list(reversed(BOTH)))))
    assert np.array_equal(one, other)


@pytest.mark.parametrize(
    ("loras", "field", "code"),
    [
        ([{"name": f"a{i}"} for i in range(5)], "loras", "1214"),  # more than 4
        ([{"name": "ink", "scale": 2.5}], "loras.0.scale", "1214"),
        ([{"name": "ink", "scale": -3}], "loras.0.scale", "1214"),
        ([{"name": "ink", "scale": "1"}], "loras.0.scale", "1214"),
        ([{"name": "ink"}, {"name": "ink", "scale": 0.5}], "loras", "1214"),
        ([{"name": "../ink"}], "loras.0.name", "1214"),
        ([{"name": "/etc"}], "loras.0.name", "1214"),
        ([{"name": "a/b"}], "loras.0.name", "1214"),
        ([{"name": ""}], "loras.0.name", "1214"),
        ([{"scale": 1}], "loras.0.name", "1213"),
        ("ink", "loras", "1214"),
    ],
)
def test_bad_loras_are_400_naming_the_field(
    lora_client: TestClient, loras: Any, field: str, code: str
) -> None:
    assert field in error(lora_client.post(IMAGES, json=body(loras)), 400, code)


def test_an_unknown_adapter_is_400_1211_listing_the_served_ones(lora_client: TestClient) -> None:
    message = error(lora_client.post(IMAGES, json=body([{"name": "oil"}])), 400, "1211")
    assert "'oil'" in message and "ink, wash" in message
    response = lora_client.post(ASYNC, json={**body([{"name": "oil"}]), "response_format": "url"})
    error(response, 400, "1211")
    openai = lora_client.post(
        V1_IMAGES, json={"prompt": "a boat", "size": "512x512", "loras": [{"name": "oil"}]}
    )
    assert openai.status_code == 400
    assert (
        openai.json()["error"]["code"] == "adapter_not_found" and openai.json()["error"]["param"] == "loras"
    )


def test_a_server_without_adapters_refuses_loras(client: TestClient) -> None:
    message = error(client.post(IMAGES, json=body(INK)), 400, "1211")
    assert "serves no LoRA adapters" in message


def test_a_key_limited_to_some_adapters_gets_403_1220_for_others(lora_client: TestClient) -> None:
    _, limited = access_of(lora_client).keys.create("ink only", loras=["ink"])
    _, free = access_of(lora_client).keys.create("any")
    ok = lora_client.post(IMAGES, json=body(INK, watermark_enabled=None), headers=bearer(limited))
    assert ok.status_code == 200, ok.text
    message = error(lora_client.post(IMAGES, json=body(BOTH), headers=bearer(limited)), 403, "1220")
    assert "'wash'" in message and "ink" in message
    assert (
        lora_client.post(IMAGES, json=body(WASH, watermark_enabled=None), headers=bearer(free)).status_code
        == 200
    )
    # No adapters at all stays allowed.
    assert (
        lora_client.post(IMAGES, json=body(watermark_enabled=None), headers=bearer(limited)).status_code
        == 200
    )
    openai = lora_client.post(
        V1_IMAGES, json={"prompt": "a boat", "size": "512x512", "model": "wash"}, headers=bearer(limited)
    )
    assert openai.status_code == 403 and openai.json()["error"]["type"] == "permission_error"


def test_adapters_are_listed_in_v1_models_with_their_parent(lora_client: TestClient) -> None:
    listed = {entry["id"]: entry for entry in lora_client.get("/v1/models").json()["data"]}
    assert "parent" not in listed["cogview-4"]
    ink = listed["ink"]
    assert ink["parent"] == "cogview-4" and ink["object"] == "model"
    assert ink["lora"]["rank"] == 4 and ink["lora"]["alpha"] == 2 and ink["lora"]["format"] == "peft"
    assert "attn1.to_q" in ink["lora"]["targets"] and ink["lora"]["size_bytes"] > 0
    assert listed["wash"]["lora"]["rank"] == 8
    assert lora_client.get("/v1/models/wash").json()["parent"] == "cogview-4"
    assert lora_client.get("/v1/models/oil").status_code == 404


def test_a_new_adapter_is_served_without_a_restart(lora_client: TestClient, lora_dir: Path) -> None:
    shutil.copytree(lora_dir / "ink", lora_dir / "fresh")
    try:
        assert "fresh" in {entry["id"] for entry in lora_client.get("/v1/models").json()["data"]}
        assert lora_client.post(IMAGES, json=body([{"name": "fresh"}])).status_code == 200
    finally:
        shutil.rmtree(lora_dir / "fresh")
    error(lora_client.post(IMAGES, json=body([{"name": "fresh"}])), 400, "1211")


def test_an_adapter_named_as_the_model_on_v1_is_that_adapter_at_scale_1(lora_client: TestClient) -> None:
    def v1(**extra: Any) -> np.ndarray:
        payload = {"prompt": "a paper boat", "size": "512x512", "seed": 3, "response_format": "b64_json"}
        response = lora_client.post(V1_IMAGES, json={**payload, **extra})
        assert response.status_code == 200, response.text
        data = base64.b64decode(response.json()["data"][0]["b64_json"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)

    # /v1 images carry the invisible watermark, which differs per image: the picture with the same
    # adapters is much nearer than the one without.
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).mean())

    as_model, base = v1(model="ink"), v1()
    explicit = v1(model="cogview-4", loras=[{"name": "ink", "scale": 1}])
    assert distance(as_model, explicit) * 3 < distance(as_model, base)
    combined, both = v1(model="ink", loras=WASH), v1(loras=BOTH)
    assert distance(combined, both) * 3 < distance(combined, as_model)
    refused = lora_client.post(V1_IMAGES, json={"prompt": "x", "model": "ink", "loras": INK})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "loras"


@pytest.mark.slow
def test_async_jobs_carry_their_adapters(lora_client: TestClient) -> None:
    sync = picture(lora_client.post(IMAGES, json=body(INK)))
    submitted = lora_client.post(ASYNC, json={**body(INK), "response_format": "url"})
    assert submitted.status_code == 200, submitted.text
    result = wait_for(lora_client, submitted.json()["id"], finished)
    assert result["task_status"] == "SUCCESS", result
    png = lora_client.get(result["image_result"][0]["url"].split("testserver")[1]).content
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16), sync)


def test_metrics_count_requests_per_adapter_and_loads(lora_client: TestClient) -> None:
    assert lora_client.post(IMAGES, json=body(BOTH)).status_code == 200
    error(lora_client.post(IMAGES, json=body([{"name": "oil"}])), 400, "1211")
    text = lora_client.get("/metrics").text
    assert 'cogserve_lora_requests_total{adapter="ink"}' in text
    assert 'cogserve_lora_requests_total{adapter="wash"}' in text
    assert 'adapter="oil"' not in text  # labels only for adapters served
    assert "cogserve_lora_load_duration_seconds_count" in text
    assert 'cogserve_lora_adapter_events_total{event="load"}' in text


@pytest.fixture
def no_peft(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    yield


def test_a_lora_dir_without_peft_says_what_to_install(
    no_peft: None, make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    from cogserve.engine.lora import LoraRegistry
    from cogserve.errors import ConfigError

    with pytest.raises(ConfigError, match=r"pip install 'cogserve\[lora\]'"):
        LoraRegistry.from_settings(make_settings(lora={"dir": tmp_path}))
