"""The API with images in a real S3-compatible store (SeaweedFS): generate, fetch, presign, sweep, and
a store that cannot be reached."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, update

from cogserve.errors import StorageError
from cogserve.safety.credentials import read_credentials
from cogserve.settings import Settings
from cogserve.storage import ImageRow, MetadataStore
from tests.components.s3 import S3Server, free_ports, s3_server  # noqa: F401  (the fixture)
from tests.helpers import generate, image_id_of, metadata_of, png_size, row_of

pytest.importorskip("boto3", reason="boto3 is not installed (pip install -e '.[dev]')")

PREFIX = "imgs"


def key_of(image_id: str) -> str:
    return f"{PREFIX}/{image_id[:2]}/{image_id}.png"


def object_exists(server: S3Server, bucket: str, image_id: str) -> bool:
    answer = server.client().list_objects_v2(Bucket=bucket, Prefix=key_of(image_id))
    return bool(answer.get("Contents"))


def service_of(client: TestClient) -> Any:
    return client.app.state.cogserve.service  # type: ignore[attr-defined]


def expire(client: TestClient, image_id: str) -> None:
    engine = create_engine(client.app.state.cogserve.settings.database_url)  # type: ignore[attr-defined]
    with engine.begin() as connection:
        connection.execute(update(ImageRow).where(ImageRow.id == image_id).values(expires_at=time.time() - 1))
    engine.dispose()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:  # noqa: F811
    return s3_server.new_bucket()


@pytest.fixture
def s3_settings(
    make_settings: Callable[..., Settings],
    s3_server: S3Server,  # noqa: F811
    bucket: str,
) -> Callable[..., Settings]:
    def make(**storage: Any) -> Settings:
        return make_settings(storage=s3_server.storage_settings(bucket, PREFIX, **storage))

    return make


def test_generated_image_is_stored_in_s3_and_served_from_files(
    make_client: Callable[..., TestClient],
    s3_settings: Callable[..., Settings],
    s3_server: S3Server,  # noqa: F811
    bucket: str,
) -> None:
    settings = s3_settings()
    client = make_client(settings)
    response = generate(client, size="768x512")
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    assert url.endswith(".png") and "/files/" in url
    image_id = image_id_of(url)
    assert object_exists(s3_server, bucket, image_id)
    assert list(settings.images_dir.glob("**/*.png")) == []  # nothing on the local disk

    fetched = client.get(url)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    assert png_size(fetched.content) == (768, 512)
    assert fetched.headers["content-length"] == str(len(fetched.content))
    max_age = int(fetched.headers["cache-control"].split("max-age=")[1].split(",")[0])
    assert 29 * 86400 < max_age <= 30 * 86400
    stored = s3_server.client().get_object(Bucket=bucket, Key=key_of(image_id))
    assert stored["Body"].read() == fetched.content
    assert stored["ContentType"] == "image/png"

    # b64_json images are stored the same way.
    b64 = generate(client, response_format="b64_json")
    assert b64.status_code == 200
    ids = {row_id for row_id in metadata_of(client).known_ids([image_id])}
    assert ids == {image_id}


def test_unknown_ids_are_404_with_an_s3_store(
    make_client: Callable[..., TestClient], s3_settings: Callable[..., Settings]
) -> None:
    client = make_client(s3_settings())
    response = client.get("/files/" + "A" * 32 + ".png")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "1222"


def test_presigned_url_lives_as_long_as_the_image(
    make_client: Callable[..., TestClient], s3_settings: Callable[..., Settings]
) -> None:
    client = make_client(s3_settings(presigned_urls=True, image_ttl_days=0.01))  # 864 s
    response = generate(client)
    assert response.status_code == 200, response.text
    image_id = image_id_of(response.json()["data"][0]["url"])
    row = row_of(client, f"/files/{image_id}.png")

    url = service_of(client).image_url(image_id, row.expires_at, "http://testserver")
    remaining = row.expires_at - time.time()
    expires = int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])
    assert remaining - 5 <= expires <= remaining
    fetched = httpx.get(url)  # plain HTTP, no credentials: the signature is the capability
    assert fetched.status_code == 200, fetched.text
    assert png_size(fetched.content) == (512, 512)
    assert fetched.content == client.get(f"/files/{image_id}.png").content
    assert fetched.headers["cache-control"] == f"private, max-age={expires}, immutable"

    # An expired image gets the plain link, which answers 404.
    gone = service_of(client).image_url(image_id, time.time() - 1, "http://testserver")
    assert gone == f"http://testserver/files/{image_id}.png"


def test_images_in_s3_carry_a_valid_manifest_by_every_path(
    make_client: Callable[..., TestClient],
    s3_settings: Callable[..., Settings],
    s3_server: S3Server,  # noqa: F811
    bucket: str,
) -> None:
    client = make_client(s3_settings(presigned_urls=True))
    presigned = generate(client).json()["data"][0]["url"]
    image_id = image_id_of(presigned)
    fetched = httpx.get(presigned)  # straight from the store
    assert fetched.status_code == 200, fetched.text
    stored = s3_server.client().get_object(Bucket=bucket, Key=key_of(image_id))["Body"].read()
    streamed = client.get(f"/files/{image_id}.png").content  # through the server
    assert fetched.content == stored == streamed
    found = read_credentials(stored)
    assert found is not None and found.valid and found.binding_valid and found.signature_valid
    assert found.claims["image_id"] == image_id and found.ai_generated
    answer = client.get(f"/files/{image_id}/credentials").json()  # read back from the S3 object
    assert answer["present"] and answer["valid"] and answer["claims"]["image_id"] == image_id


def test_without_presigning_links_point_at_the_server(
    make_client: Callable[..., TestClient], s3_settings: Callable[..., Settings]
) -> None:
    client = make_client(s3_settings())
    image_id = image_id_of(generate(client).json()["data"][0]["url"])
    url = service_of(client).image_url(image_id, time.time() + 600, "https://img.example.com")
    assert url == f"https://img.example.com/files/{image_id}.png"


def test_expiry_sweep_removes_object_and_row(
    make_client: Callable[..., TestClient],
    s3_settings: Callable[..., Settings],
    s3_server: S3Server,  # noqa: F811
    bucket: str,
) -> None:
    client = make_client(s3_settings())
    old, live = (image_id_of(generate(client).json()["data"][0]["url"]) for _ in range(2))
    expire(client, old)
    assert client.get(f"/files/{old}.png").status_code == 404
    assert object_exists(s3_server, bucket, old)

    report = service_of(client).sweep()
    assert report.expired == 1
    assert not object_exists(s3_server, bucket, old)
    store = metadata_of(client)
    assert store.get(old) is None and store.get(live) is not None
    store.close()
    assert client.get(f"/files/{live}.png").status_code == 200


def test_a_sweep_cut_short_between_object_and_row_leaves_only_a_refused_expired_row(
    make_client: Callable[..., TestClient],
    s3_settings: Callable[..., Settings],
    s3_server: S3Server,  # noqa: F811
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client(s3_settings())
    old = image_id_of(generate(client).json()["data"][0]["url"])
    expire(client, old)

    def database_down(self: MetadataStore, ids: list[str]) -> int:
        raise StorageError("database error while trying to delete image metadata")

    with monkeypatch.context() as patch:
        patch.setattr(MetadataStore, "delete", database_down)
        with pytest.raises(StorageError):
            service_of(client).sweep()
    assert not object_exists(s3_server, bucket, old)
    assert client.get(f"/files/{old}.png").status_code == 404  # the row is expired: refused
    assert service_of(client).sweep().expired == 1
    store = metadata_of(client)
    assert store.get(old) is None
    store.close()


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"


def test_unreachable_store_is_a_500_in_the_envelope_and_leaves_no_row(
    make_client: Callable[..., TestClient], s3_settings: Callable[..., Settings]
) -> None:
    client = make_client(s3_settings(s3_endpoint_url=closed_endpoint()))
    started = time.monotonic()
    response = generate(client)
    elapsed = time.monotonic() - started
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "500", "message": "could not store the image: the image store is unreachable"}
    }
    assert response.headers["x-should-retry"] == "false"
    assert elapsed < 10
    store = metadata_of(client)
    assert store.expired_ids(now=time.time() + 10**9) == []  # no row at all
    store.close()
    # The server itself is fine: healthy, ready, and still answering.
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert generate(client).status_code == 500


def test_store_down_when_fetching_is_a_500_in_the_envelope(
    make_client: Callable[..., TestClient], s3_settings: Callable[..., Settings]
) -> None:
    settings = s3_settings()
    image_id = image_id_of(generate(make_client(settings)).json()["data"][0]["url"])
    # A second server on the same database whose store has gone away.
    down = make_client(s3_settings(s3_endpoint_url=closed_endpoint()))
    assert down.app.state.cogserve.settings.database_url == settings.database_url  # type: ignore[attr-defined]
    response = down.get(f"/files/{image_id}.png")
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "500",
        "message": "could not read the image: the image store is unreachable",
    }
