"""Content Credentials as a client gets them: a valid C2PA manifest in the images of every route,
none when the watermark is off, the credentials route, and a server that refuses bad certificates."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cogserve.api import create_app
from cogserve.errors import ConfigError
from cogserve.safety.credentials import TRAINED_ALGORITHMIC_MEDIA, Credentials, read_credentials
from cogserve.safety.devcert import make_dev_chain
from cogserve.settings import Settings
from tests.api.test_jobs import finished, submit, wait_for
from tests.helpers import change_one_pixel, fetch_png, generate, image_id_of, open_png

OPENAI_IMAGES = "/v1/images/generations"


def credentials_of(png: bytes) -> Credentials:
    found = read_credentials(png)
    assert found is not None, "no C2PA manifest in the image"
    return found


def assert_signed(png: bytes, model: str) -> Credentials:
    """A manifest whose signature and hard binding c2pa validates; the development chain is on no
    trust list, so that is the one failure and the state is Valid (not Trusted)."""
    found = credentials_of(png)
    assert found.state == "Valid", found
    assert found.signature_valid and found.binding_valid
    assert found.failures == ["signingCredential.untrusted"]
    assert found.claims["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert found.claims["action"] == "c2pa.created"
    assert found.claims["model"] == model
    assert found.claims["generator"].startswith("cogserve ")
    assert "prompt" not in found.claims and "user_id" not in found.claims
    open_png(png)  # still a PNG that decodes to the last pixel
    return found


def test_bigmodel_sync_images_are_signed_with_their_id_and_one_pixel_breaks_it(client: TestClient) -> None:
    response = generate(client, model="cogview-4-250304", user_id="user-7")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"created", "data", "content_filter", "id", "request_id"}  # the wire is unchanged
    url = body["data"][0]["url"]
    png = fetch_png(client, url)
    found = assert_signed(png, "cogview-4-250304")
    assert found.claims["image_id"] == image_id_of(url)
    tampered = credentials_of(change_one_pixel(png))
    assert tampered.state == "Invalid" and "assertion.dataHash.mismatch" in tampered.failures


def test_async_job_images_are_signed(client: TestClient) -> None:
    job = submit(client, model="cogview-4")
    assert job.status_code == 200, job.text
    body = wait_for(client, job.json()["id"], finished)
    assert body["task_status"] == "SUCCESS", body
    url = body["image_result"][0]["url"]
    assert assert_signed(fetch_png(client, url), "cogview-4").claims["image_id"] == image_id_of(url)


def test_openai_images_are_signed_as_urls_and_as_b64_json(client: TestClient) -> None:
    response = client.post(
        OPENAI_IMAGES, json={"model": "cogview-4", "prompt": "a lighthouse", "size": "512x512", "n": 2}
    )
    assert response.status_code == 200, response.text
    ids = set()
    for item in response.json()["data"]:
        ids.add(assert_signed(fetch_png(client, item["url"]), "cogview-4").claims["image_id"])
    assert len(ids) == 2  # each image its own manifest
    b64 = client.post(
        OPENAI_IMAGES,
        json={"prompt": "a lighthouse", "size": "512x512", "response_format": "b64_json"},
    )
    assert b64.status_code == 200, b64.text
    assert_signed(base64.b64decode(b64.json()["data"][0]["b64_json"]), "cogview-4")


def test_watermark_off_leaves_the_manifest_out_too(client: TestClient) -> None:
    response = generate(client, watermark_enabled=False)
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    assert read_credentials(fetch_png(client, url)) is None
    answer = client.get(f"/files/{image_id_of(url)}/credentials")
    assert answer.status_code == 200 and answer.json()["present"] is False


def test_the_credentials_route_reads_a_stored_image(client: TestClient) -> None:
    url = generate(client).json()["data"][0]["url"]
    image_id = image_id_of(url)
    answer = client.get(f"/files/{image_id}/credentials")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["present"] and body["valid"] and not body["trusted"]
    assert body["state"] == "Valid" and body["ai_generated"]
    assert body["claims"]["image_id"] == image_id and body["claims"]["model"] == "cogview-4"
    assert client.get("/files/" + "A" * 32 + "/credentials").status_code == 404
    assert client.get("/files/not-an-id/credentials").status_code == 404


def test_the_operator_can_put_the_prompt_and_user_id_in(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Settings]
) -> None:
    client = make_client(make_settings(credentials={"include_prompt": True, "include_user_id": True}))
    url = generate(client, prompt="一只小猫", user_id="user-42").json()["data"][0]["url"]
    claims = credentials_of(fetch_png(client, url)).claims
    assert (claims["prompt"], claims["user_id"]) == ("一只小猫", "user-42")


def test_credentials_off_signs_nothing(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(credentials={"enabled": False})
    client = make_client(settings)
    url = generate(client).json()["data"][0]["url"]
    assert read_credentials(fetch_png(client, url)) is None
    assert not settings.dev_credentials_dir.exists()


def test_the_operators_certificate_signs_and_bad_ones_stop_the_start(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    chain, key = make_dev_chain("Example Newsroom")
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    files = {"cert_chain": tmp_path / "chain.pem", "private_key": tmp_path / "key.pem"}
    settings = make_settings(credentials=files)
    client = make_client(settings)
    url = generate(client).json()["data"][0]["url"]
    assert credentials_of(fetch_png(client, url)).claims["issuer"] == "Example Newsroom"
    assert not settings.dev_credentials_dir.exists()  # no development chain when one is configured

    _, other_key = make_dev_chain()
    (tmp_path / "other.pem").write_bytes(other_key)
    with pytest.raises(ConfigError, match="does not belong"):
        create_app(make_settings(credentials={**files, "private_key": tmp_path / "other.pem"}))
    with pytest.raises(ConfigError, match="private key not found"):
        create_app(make_settings(credentials={**files, "private_key": tmp_path / "missing.pem"}))
