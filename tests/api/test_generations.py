"""The happy paths of POST /api/paas/v4/images/generations, on the real tiny pipeline."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cogserve.service.sizes import RECOMMENDED_SIZES
from cogserve.settings import Settings
from tests.helpers import IMAGES, fetch_png, generate, pixels, png_size, row_of


def test_response_has_the_seed_fields_and_a_working_url(client: TestClient) -> None:
    before = int(time.time())
    response = generate(client, prompt="一只可爱的小猫咪")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"created", "data", "content_filter", "id", "request_id"}
    assert isinstance(body["created"], int) and before <= body["created"] <= time.time()
    assert body["content_filter"] == [{"role": "user", "level": 3}]
    assert len(body["data"]) == 1 and body["data"][0].keys() == {"url", "revised_prompt"}
    assert body["id"] == body["request_id"] == response.headers["x-request-id"]
    url = body["data"][0]["url"]
    assert url.startswith("http://testserver/files/") and url.endswith(".png")
    assert png_size(fetch_png(client, url)) == (512, 512)


def test_request_id_is_echoed_and_becomes_the_call_id(client: TestClient) -> None:
    response = generate(client, request_id="my-call-0001")
    body = response.json()
    assert body["id"] == body["request_id"] == "my-call-0001"
    assert response.headers["x-request-id"] == "my-call-0001"


def test_every_optional_field_sent_as_null_takes_its_default(client: TestClient) -> None:
    body = {
        "model": "cogview-4-250304",
        "prompt": "a cat",
        "size": None,
        "quality": None,
        "user_id": None,
        "n": None,
        "response_format": None,
        "request_id": None,
        "style": None,
        "user": None,
        "sensitive_word_check": None,
        "watermark_enabled": None,
        "seed": None,
    }
    response = client.post(IMAGES, json=body)
    assert response.status_code == 200, response.text
    assert png_size(fetch_png(client, response.json()["data"][0]["url"])) == (1024, 1024)


def test_b64_json_returns_the_png_inline(client: TestClient) -> None:
    response = generate(client, response_format="b64_json", size="768x512")
    item = response.json()["data"][0]
    assert set(item) == {"b64_json", "revised_prompt"}
    assert png_size(base64.b64decode(item["b64_json"])) == (768, 512)


SLOW = pytest.mark.slow
# About 1 MP each (2-3 s, 15 s for the six): 1024x1024 in the fast tier, the other six in the full one.
SEVEN = [size if size == "1024x1024" else pytest.param(size, marks=SLOW) for size in RECOMMENDED_SIZES]


@pytest.mark.parametrize("size", SEVEN)
def test_the_seven_recommended_sizes_are_generated_at_that_size(client: TestClient, size: str) -> None:
    response = generate(client, size=size)
    assert response.status_code == 200, response.text
    width, height = map(int, size.split("x"))
    assert png_size(fetch_png(client, response.json()["data"][0]["url"])) == (width, height)


# 2048x1024 is 2 MP: ~8 s on an idle machine, the full tier's.
@pytest.mark.parametrize("size", ["512x512", pytest.param("2048x1024", marks=SLOW), "512x2048"])
def test_boundary_sizes_are_generated(client: TestClient, size: str) -> None:
    response = generate(client, size=size, response_format="b64_json")
    assert response.status_code == 200, response.text
    width, height = map(int, size.split("x"))
    assert png_size(base64.b64decode(response.json()["data"][0]["b64_json"])) == (width, height)


def test_same_seed_same_pixels_different_seed_different_pixels(client: TestClient) -> None:
    def image(seed: int) -> np.ndarray:
        # Unmarked: the invisible watermark carries the image id, so marked copies differ.
        response = generate(client, seed=seed, response_format="b64_json", watermark_enabled=False)
        return pixels(base64.b64decode(response.json()["data"][0]["b64_json"]))

    first, again, other = image(1234), image(1234), image(4321)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.abs(first - other).mean() > 1.0


def test_quality_changes_the_number_of_steps(client: TestClient) -> None:
    steps = {}
    for quality in ("standard", "hd"):
        url = generate(client, quality=quality, seed=5).json()["data"][0]["url"]
        steps[quality] = row_of(client, url).steps
    assert steps == {"standard": 2, "hd": 3}


def test_the_row_records_the_request(client: TestClient) -> None:
    response = generate(
        client,
        prompt="夕阳下的长城",
        user_id="end-user-42",
        seed=77,
        quality="hd",
        size="768x512",
        request_id="rec-1",
        user="alice",
        style="vivid",
        watermark_enabled=False,
        sensitive_word_check={"type": "ALL", "status": "DISABLE"},
    )
    created = response.json()["created"]
    row = row_of(client, response.json()["data"][0]["url"])
    assert (row.prompt, row.user_id, row.seed, row.quality, row.request_id) == (
        "夕阳下的长城",
        "end-user-42",
        77,
        "hd",
        "rec-1",
    )
    assert (row.width, row.height, row.steps, row.guidance_scale) == (768, 512, 3, 3.5)
    assert row.model == "cogview-4" and row.duration_s > 0
    assert (row.user, row.style, row.watermark_enabled) == ("alice", "vivid", False)
    assert "DISABLE" in row.sensitive_word_check
    assert row.expires_at == pytest.approx(row.created_at + 30 * 86400)
    assert int(row.created_at) == created


def test_public_url_setting_prefixes_links(make_client: Callable[..., TestClient], make_settings) -> None:
    client = make_client(make_settings(server={"public_url": "https://img.example.com/cog/"}))
    url = generate(client).json()["data"][0]["url"]
    assert url.startswith("https://img.example.com/cog/files/")


FORWARDED = {
    "x-forwarded-proto": "https",
    "x-forwarded-host": "images.example.org",
    "x-forwarded-prefix": "/v",
}


def test_forwarded_headers_from_a_trusted_proxy(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Settings]
) -> None:
    # TestClient's peer address is "testclient".
    client = make_client(make_settings(server={"forwarded_allow_ips": ["testclient"]}))
    url = client.post(
        IMAGES, json={"model": "cogview-4", "prompt": "x", "size": "512x512"}, headers=FORWARDED
    ).json()["data"][0]["url"]
    assert url.startswith("https://images.example.org/v/files/")


def test_forwarded_headers_from_anyone_else_are_ignored(client: TestClient) -> None:
    url = client.post(
        IMAGES, json={"model": "cogview-4", "prompt": "x", "size": "512x512"}, headers=FORWARDED
    ).json()["data"][0]["url"]
    assert url.startswith("http://testserver/files/")
