"""The official ``openai`` SDK against a live ``cogserve serve``: only base_url points at cogserve."""

from __future__ import annotations

import base64

import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import Server
from tests.helpers import download_png, png_size


@pytest.fixture
def client(server: Server) -> OpenAI:
    # max_retries=0: an error case must fail at once, not after the SDK's backoff.
    return OpenAI(base_url=f"{server.url}/v1", api_key="anything", max_retries=0)


def test_generate_n_urls(server: Server, client: OpenAI) -> None:
    response = client.images.generate(model="cogview-4", prompt="a lighthouse at dusk", size="512x512", n=2)
    assert isinstance(response.created, int)
    urls = [image.url for image in response.data]
    assert len(set(urls)) == 2 and all(url.startswith(f"{server.url}/files/") for url in urls)
    assert [png_size(download_png(url)) for url in urls] == [(512, 512), (512, 512)]
    assert all(image.revised_prompt is None and image.b64_json is None for image in response.data)


def test_generate_b64_json_with_openai_options(client: OpenAI) -> None:
    response = client.images.generate(
        model="cogview-4-250304",
        prompt="水墨画风格的山水",
        size="768x512",
        quality="high",
        response_format="b64_json",
        user="end-user-7",
        style="natural",  # accepted and ignored
        extra_body={"seed": 3},
    )
    assert len(response.data) == 1 and response.data[0].url is None
    assert png_size(base64.b64decode(response.data[0].b64_json)) == (768, 512)


def test_models_list_and_retrieve(client: OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["cogview-4", "cogview-4-250304"]
    model = client.models.retrieve("cogview-4")
    assert (model.id, model.object, model.owned_by) == ("cogview-4", "model", "cogserve")


def test_errors_raise_the_sdk_exceptions(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="cogview-4", prompt="a cat", size="256x256")
    assert bad.value.status_code == 400
    error = bad.value
    assert (error.type, error.param, error.code) == ("invalid_request_error", "size", "invalid_value")
    assert "between 512 and 2048" in bad.value.message
    with pytest.raises(openai.BadRequestError, match="less than or equal to 4"):
        client.images.generate(model="cogview-4", prompt="a cat", size="512x512", n=5)
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(model="dall-e-3", prompt="a cat")
    assert (missing.value.param, missing.value.code) == ("model", "model_not_found")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")
