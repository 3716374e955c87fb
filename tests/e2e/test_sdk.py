"""BigModel's documented example, unchanged but for base_url, against a live server; and zai-sdk."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.helpers import download_png, png_size


def test_seed_example_with_zhipuai(server: Server) -> None:
    from zhipuai import ZhipuAI

    client = ZhipuAI(api_key="any-key", base_url=f"{server.url}/api/paas/v4")  # only base_url changed

    response = client.images.generations(
        model="cogview-4-250304",  # 填写需要调用的模型编码
        prompt="一只可爱的小猫咪",
    )

    print(response.data[0].url)
    assert response.data[0].url.startswith(f"{server.url}/files/")
    assert png_size(download_png(response.data[0].url)) == (1024, 1024)
    assert isinstance(response.created, int)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"size": "768x1344", "quality": "hd"}, (768, 1344)),
        ({"size": None}, (1024, 1024)),  # the SDK sends "size": null
        ({"size": "1440x720", "quality": None, "user_id": None, "request_id": None}, (1440, 720)),
    ],
)
def test_zhipuai_sizes_quality_and_nulls(server: Server, kwargs: dict, expected: tuple[int, int]) -> None:
    from zhipuai import ZhipuAI

    client = ZhipuAI(api_key="any-key", base_url=f"{server.url}/api/paas/v4")
    response = client.images.generations(model="cogview-4", prompt="a red panda", **kwargs)
    assert png_size(download_png(response.data[0].url)) == expected


def test_zhipuai_extras_b64_and_extra_body(server: Server) -> None:
    from zhipuai import ZhipuAI

    client = ZhipuAI(api_key="any-key", base_url=f"{server.url}/api/paas/v4")
    response = client.images.generations(
        model="cogview-4-250304",
        prompt="水墨画风格的山水",
        size="512x512",
        response_format="b64_json",
        user_id="user-123456",
        request_id="sdk-req-1",
        style="vivid",
        user="bob",
        sensitive_word_check={"type": "ALL", "status": "ENABLE"},
        extra_body={"watermark_enabled": False, "seed": 9},
    )
    data = base64.b64decode(response.data[0].b64_json)
    assert png_size(data) == (512, 512)


def test_zhipuai_sees_errors_as_exceptions_with_the_code(server: Server) -> None:
    from zhipuai import APIRequestFailedError, ZhipuAI

    client = ZhipuAI(api_key="any-key", base_url=f"{server.url}/api/paas/v4", max_retries=0)
    with pytest.raises(APIRequestFailedError) as info:
        client.images.generations(model="cogview-4", prompt="x", size="100x100")
    assert info.value.status_code == 400
    assert "1214" in str(info.value) and "size" in str(info.value)
    with pytest.raises(APIRequestFailedError, match="1211"):
        client.images.generations(model="dall-e-3", prompt="x")


def test_zai_sdk_client(server: Server) -> None:
    from zai import ZhipuAiClient

    client = ZhipuAiClient(api_key="any-key", base_url=f"{server.url}/api/paas/v4")
    response = client.images.generations(
        model="cogview-4-250304", prompt="一只可爱的小猫咪", size="864x1152", watermark_enabled=True
    )
    assert png_size(download_png(response.data[0].url)) == (864, 1152)
    nulls = client.images.generations(model="cogview-4", prompt="a cat", size=None, quality=None)
    assert png_size(download_png(nulls.data[0].url)) == (1024, 1024)


def test_plain_http_and_request_ids(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/api/paas/v4/images/generations",
        json={"model": "cogview-4", "prompt": "a cat", "size": "512x512", "request_id": "curl-1"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "curl-1"
    assert response.json()["id"] == "curl-1"
    assert "curl-1" in server.log.read_text()  # one access-log line per request, with its id


def test_concurrent_clients_all_get_their_own_image(server: Server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def call(i: int) -> tuple[str, str]:
        response = httpx.post(
            f"{server.url}/api/paas/v4/images/generations",
            json={"model": "cogview-4", "prompt": f"cat {i}", "size": "512x512", "request_id": f"par-{i}"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return response.json()["request_id"], response.json()["data"][0]["url"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    assert [request_id for request_id, _ in results] == [f"par-{i}" for i in range(6)]
    assert len({url for _, url in results}) == 6
    assert all(png_size(download_png(url)) == (512, 512) for _, url in results)
