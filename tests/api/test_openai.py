"""The OpenAI-compatible routes (/v1/images/generations, /v1/models) on the real tiny pipeline."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cogserve.engine import BatchItem, Engine, GenerationOutput
from tests.helpers import DelegatingEngine, access_of, fetch_png, pixels, png_size, row_of

IMAGES = "/v1/images/generations"
ERROR_KEYS = {"message", "type", "param", "code"}


def openai_generate(client: TestClient, headers: dict[str, str] | None = None, **body: Any) -> Any:
    payload = {"prompt": "a lighthouse at dusk", "size": "512x512", **body}
    return client.post(IMAGES, json=payload, headers=headers)


def openai_error(response: Any, status: int) -> dict[str, Any]:
    """The OpenAI envelope of an error response, checked for shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    error: dict[str, Any] = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_n_images_at_the_size_asked_each_its_own(client: TestClient) -> None:
    before = int(time.time())
    response = openai_generate(client, model="cogview-4", size="512x768", n=2)
    body = response.json()
    assert response.status_code == 200, body
    assert set(body) == {"created", "data"}
    assert isinstance(body["created"], int) and before <= body["created"] <= time.time()
    assert len(body["data"]) == 2 and all(item.keys() == {"url", "revised_prompt"} for item in body["data"])
    urls = [item["url"] for item in body["data"]]
    assert all(url.startswith("http://testserver/files/") and url.endswith(".png") for url in urls)
    images = [fetch_png(client, url) for url in urls]
    assert [png_size(image) for image in images] == [(512, 768), (512, 768)]
    assert images[0] != images[1]


def test_defaults_model_size_and_null_fields(client: TestClient) -> None:
    # What the SDK sends for arguments passed as None, plus fields cogserve ignores.
    body = {"prompt": "a kite", "model": None, "n": None, "quality": None, "size": "auto", "user": None}
    extras = {"style": "vivid", "background": "auto", "output_format": "png", "moderation": "low"}
    response = client.post(IMAGES, json={**body, **extras})
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    row = row_of(client, url)
    assert (row.model, row.width, row.height, row.quality) == ("cogview-4", 1024, 1024, "standard")


def test_b64_json_decodes_to_pngs(client: TestClient) -> None:
    response = openai_generate(client, response_format="b64_json", n=2, size="768x512")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 2 and all(set(item) == {"b64_json", "revised_prompt"} for item in data)
    assert [png_size(base64.b64decode(item["b64_json"])) for item in data] == [(768, 512)] * 2


@pytest.mark.parametrize(
    ("quality", "steps"),
    [("low", 2), ("auto", 2), ("hd", 3), ("high", 3)],
)
def test_quality_maps_onto_the_step_count(client: TestClient, quality: str, steps: int) -> None:
    response = openai_generate(client, quality=quality)
    row = row_of(client, response.json()["data"][0]["url"])
    assert (row.steps, row.quality) == (steps, "hd" if steps == 3 else "standard")


def test_image_i_gets_seed_plus_i_and_a_seed_repeats_its_pixels(client: TestClient) -> None:
    def call(seed: int, n: int) -> tuple[list[int], list[np.ndarray]]:
        data = openai_generate(client, seed=seed, n=n).json()["data"]
        seeds = [row_of(client, item["url"]).seed for item in data]
        return seeds, [pixels(fetch_png(client, item["url"])) for item in data]

    def changed(a: np.ndarray, b: np.ndarray) -> float:
        # The fraction of clearly different pixels: the invisible watermark carries the image id,
        # so two copies of one image differ, but only in faint traces on a few pixels.
        return float((np.abs(a - b) > 8).mean())

    (seeds, pair), (alone_seeds, alone) = call(40, 2), call(41, 1)
    assert (seeds, alone_seeds) == ([40, 41], [41])
    assert changed(pair[1], alone[0]) < 0.01  # batched or alone, seed 41 gives the same image
    assert changed(pair[0], pair[1]) > 0.3


def test_the_end_user_id_is_recorded_and_blocks_apply(client: TestClient) -> None:
    url = openai_generate(client, user="alice").json()["data"][0]["url"]
    assert row_of(client, url).user_id == "alice"
    url = openai_generate(client, user="alice", safety_identifier="alice-2").json()["data"][0]["url"]
    assert row_of(client, url).user_id == "alice-2"
    access_of(client).accounts.block_user("troll-42", "repeated abuse")
    response = openai_generate(client, user="troll-42", n=2)
    error = openai_error(response, 403)
    assert (error["type"], error["code"]) == ("permission_error", "user_blocked")
    assert "repeated abuse" in error["message"]
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("body", "status", "param", "code", "text"),
    [
        ({"size": "256x256"}, 400, "size", "invalid_value", "between 512 and 2048"),
        ({"size": "1000x1000"}, 400, "size", "invalid_value", "divisible by 16"),
        ({"n": 5}, 400, "n", "invalid_value", "4"),
        ({"n": 0}, 400, "n", "invalid_value", "1"),
        ({"n": "2"}, 400, "n", "invalid_value", "integer"),
        ({"prompt": None}, 400, "prompt", "missing_required_parameter", "prompt"),
        ({"prompt": "   "}, 400, "prompt", "invalid_value", "empty"),
        ({"quality": "ultra"}, 400, "quality", "invalid_value", "standard"),
        ({"response_format": "png"}, 400, "response_format", "invalid_value", "url"),
        ({"user": ""}, 400, "user", "invalid_value", "1 character"),
        ({"seed": -1}, 400, "seed", "invalid_value", "0"),
        ({"model": "dall-e-3"}, 404, "model", "model_not_found", "dall-e-3"),
        ({"prompt": "x" * 5000}, 400, "prompt", "string_above_max_length", "4000"),
    ],
)
def test_invalid_requests_get_the_openai_envelope(
    client: TestClient, body: dict[str, Any], status: int, param: str, code: str, text: str
) -> None:
    response = openai_generate(client, **body)
    error = openai_error(response, status)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert text in error["message"]
    assert response.headers["x-should-retry"] == "false"


def test_malformed_bodies_and_moderation(client: TestClient) -> None:
    error = openai_error(client.post(IMAGES, content=b"{", headers={"content-type": "application/json"}), 400)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)
    error = openai_error(openai_generate(client, prompt="pipe bomb"), 400)
    assert (error["type"], error["code"]) == ("invalid_request_error", "content_policy_violation")


def test_routing_errors_on_v1_use_the_openai_envelope_and_bigmodel_keeps_its_own(client: TestClient) -> None:
    error = openai_error(client.get("/v1/nothing-here"), 404)
    assert error["type"] == "invalid_request_error" and "/v1/nothing-here" in error["message"]
    response = client.get(IMAGES)
    error = openai_error(response, 405)
    assert "GET" in error["message"] and "POST" in response.headers["allow"]
    bigmodel = client.get("/api/paas/v4/nothing-here")
    assert bigmodel.status_code == 404 and set(bigmodel.json()["error"]) == {"code", "message"}
    bigmodel = client.post("/api/paas/v4/images/generations", json={"model": "dall-e-3", "prompt": "x"})
    assert bigmodel.status_code == 400 and bigmodel.json()["error"]["code"] == "1211"


def test_an_unexpected_failure_is_a_500_in_the_openai_envelope(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr(client.app.state.cogserve.service, "_watermark_wanted", broken)  # type: ignore[attr-defined]
    response = openai_generate(client)
    error = openai_error(response, 500)
    assert (error["type"], error["code"]) == ("server_error", None)
    assert "boom" not in error["message"] and response.headers["x-request-id"] in error["message"]


def test_models_list_and_retrieve(client: TestClient) -> None:
    codes = client.app.state.cogserve.settings.model.codes  # type: ignore[attr-defined]
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [model["id"] for model in listing["data"]] == codes
    assert all(
        model["object"] == "model" and model["owned_by"] == "cogserve" and isinstance(model["created"], int)
        for model in listing["data"]
    )
    one = client.get(f"/v1/models/{codes[-1]}")
    assert one.status_code == 200 and one.json() == listing["data"][-1]
    error = openai_error(client.get("/v1/models/dall-e-3"), 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")


def test_with_auth_on_a_key_is_needed(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    client = make_client(make_settings(auth={"require_auth": True}))
    for response in (openai_generate(client), client.get("/v1/models"), client.get("/v1/models/cogview-4")):
        error = openai_error(response, 401)
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    error = openai_error(openai_generate(client, headers={"Authorization": "Bearer nope.nope"}), 401)
    assert error["code"] == "invalid_api_key"
    _, key = access_of(client).keys.create("sdk")
    headers = {"Authorization": f"Bearer {key}"}
    assert openai_generate(client, headers=headers).status_code == 200
    assert client.get("/v1/models", headers=headers).status_code == 200


def test_one_request_counts_once_against_the_limits(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    client = make_client(make_settings(auth={"user_rpm": 1}))
    assert openai_generate(client, user="bob", n=2).status_code == 200
    response = openai_generate(client, user="bob")
    error = openai_error(response, 429)
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert int(response.headers["retry-after"]) >= 1


class GatedEngine(DelegatingEngine):
    """The real engine, recording batch sizes; the first batch waits at a gate."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.batches: list[int] = []
        self.gate = threading.Event()

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        self.batches.append(len(items))
        self.gate.wait(30)
        return self.inner.generate_batch(items)


def test_the_images_of_one_request_share_a_batch(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], shared_engine: Engine
) -> None:
    engine = GatedEngine(shared_engine)
    client = make_client(make_settings(scheduler={"max_batch_size": 3}), engine=engine)
    scheduler = client.app.state.cogserve.scheduler  # type: ignore[attr-defined]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(openai_generate, client, n=3)
        # Whatever starts first is held, so the rest must queue; then they go as one batch.
        deadline = time.monotonic() + 30
        while not (engine.batches and sum(engine.batches) + scheduler.stats.queued == 3):
            assert time.monotonic() < deadline, (engine.batches, scheduler.stats)
            time.sleep(0.01)
        engine.gate.set()
        response = pending.result(60)
    assert response.status_code == 200, response.text
    assert sum(engine.batches) == 3 and len(engine.batches) <= 2


def test_openapi_documents_the_routes_and_their_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"][IMAGES]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "n", "size", "quality", "response_format", "user", "seed"} <= set(body["properties"])
    assert body["required"] == ["prompt"]
    assert all(field.get("description") for field in body["properties"].values())
    error_ref = post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert error_ref.endswith("/OpenAIErrorEnvelope")
    error_body = schema["components"]["schemas"]["OpenAIErrorBody"]["properties"]
    assert set(error_body) == ERROR_KEYS and all(field.get("description") for field in error_body.values())
    for path in ("/v1/models", "/v1/models/{model}"):
        assert schema["paths"][path]["get"]["responses"]["401"]
    images = schema["components"]["schemas"]["OpenAIImagesResponse"]["properties"]
    assert set(images) == {"created", "data"}
