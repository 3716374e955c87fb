"""S3ImageStore against a real SeaweedFS, and the sweep's ordering on both stores."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from cogserve.errors import StorageError
from cogserve.settings import Settings
from cogserve.storage import (
    ImageRow,
    ImageStore,
    LocalImageStore,
    MetadataStore,
    create_image_store,
    new_image_id,
)
from cogserve.storage import sweep as sweep_module
from cogserve.storage.sweep import sweep
from tests.components.s3 import S3Server, free_ports, s3_server  # noqa: F401  (the fixture)

pytest.importorskip("boto3", reason="boto3 is not installed (pip install -e '.[dev]')")

from cogserve.storage.s3 import MAX_PRESIGN_S, S3ImageStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 300  # 76 KiB: more than one stream chunk


def s3_store(server: S3Server, bucket: str, prefix: str = "images", **extra: object) -> S3ImageStore:
    store = create_image_store(Settings(storage=server.storage_settings(bucket, prefix, **extra)))
    assert isinstance(store, S3ImageStore)
    return store


@pytest.fixture
def bucket(s3_server: S3Server) -> str:  # noqa: F811
    return s3_server.new_bucket()


@pytest.fixture
def store(s3_server: S3Server, bucket: str) -> S3ImageStore:  # noqa: F811
    return s3_store(s3_server, bucket)


def closed_port_store(bucket: str = "no-such-bucket") -> S3ImageStore:
    port = free_ports(1)[0]  # nothing listens there once the probe socket is closed
    settings = Settings(
        storage={
            "image_store": f"s3://{bucket}/images",
            "s3_endpoint_url": f"http://127.0.0.1:{port}",
            "s3_access_key_id": "k",
            "s3_secret_access_key": "s",
        }
    )
    store = create_image_store(settings)
    assert isinstance(store, S3ImageStore)
    return store


def test_the_factory_picks_the_store_from_settings(tmp_path: Path, s3_server: S3Server) -> None:  # noqa: F811
    local = create_image_store(Settings(storage={"data_dir": tmp_path}))
    assert isinstance(local, LocalImageStore) and local.root == tmp_path / "images"
    remote = s3_store(s3_server, "some-bucket", "a/b/")
    assert (remote.bucket, remote.prefix) == ("some-bucket", "a/b")
    assert remote.location == f"s3://some-bucket/a/b at {s3_server.endpoint_url}"


def test_write_then_read_back(s3_server: S3Server, bucket: str, store: S3ImageStore) -> None:  # noqa: F811
    image_id = new_image_id()
    assert store.size(image_id) is None and not store.exists(image_id) and store.open(image_id) is None
    store.write(image_id, PNG)

    assert store.size(image_id) == len(PNG) and store.exists(image_id)
    opened = store.open(image_id)
    assert opened is not None and opened.path is None and opened.chunks is not None
    assert opened.size == len(PNG)
    chunks = list(opened.chunks)
    assert len(chunks) > 1 and b"".join(chunks) == PNG
    # The layout the docs promise, with the content type a browser needs.
    head = s3_server.client().head_object(Bucket=bucket, Key=f"images/{image_id[:2]}/{image_id}.png")
    assert head["ContentType"] == "image/png"


def test_a_store_without_prefix_uses_the_bucket_root(s3_server: S3Server, bucket: str) -> None:  # noqa: F811
    store = s3_store(s3_server, bucket, prefix="")
    image_id = new_image_id()
    store.write(image_id, PNG)
    s3_server.client().head_object(Bucket=bucket, Key=f"{image_id[:2]}/{image_id}.png")
    assert list(store.stored_ids()) == [image_id]


def test_delete_and_delete_many_and_missing_ids(store: S3ImageStore) -> None:
    ids = [new_image_id() for _ in range(3)]
    for image_id in ids:
        store.write(image_id, PNG)
    store.delete(ids[0])
    store.delete(ids[0])  # absent: no error
    assert not store.exists(ids[0])
    store.delete_many([*ids[1:], new_image_id()])
    assert not any(store.exists(image_id) for image_id in ids)
    with pytest.raises(ValueError):
        store.delete("../../etc/passwd")


def test_stored_ids_respects_age_and_ignores_foreign_keys(
    s3_server: S3Server,  # noqa: F811
    bucket: str,
    store: S3ImageStore,
) -> None:
    image_id = new_image_id()
    store.write(image_id, PNG)
    client = s3_server.client()
    other = new_image_id()
    for key in (
        "images/README.txt",
        f"images/zz{other[2:4]}/{other}.png",  # wrong fan-out folder
        f"elsewhere/{other[:2]}/{other}.png",  # outside the prefix
        f"images/{other[:2]}/{other}.jpg",
    ):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert list(store.stored_ids()) == [image_id]
    assert list(store.stored_ids(older_than_s=3600)) == []
    assert store.remove_stale_temp_files(older_than_s=0) == 0


def test_presigned_url_works_without_credentials_and_expires(store: S3ImageStore) -> None:
    image_id = new_image_id()
    store.write(image_id, PNG)
    url = store.presigned_url(image_id, 120)
    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["120"]
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "private, max-age=120, immutable"
    # The signature is what grants access: the bare object URL is refused, a tampered one too.
    assert httpx.get(url.split("?")[0]).status_code == 403
    assert httpx.get(url.replace("X-Amz-Expires=120", "X-Amz-Expires=999")).status_code == 403
    # SigV4 caps a presigned URL's life at 7 days.
    long = store.presigned_url(image_id, 30 * 86400)
    assert long is not None and parse_qs(urlsplit(long).query)["X-Amz-Expires"] == [str(MAX_PRESIGN_S)]


def test_local_store_has_no_presigned_urls(tmp_path: Path) -> None:
    assert LocalImageStore(tmp_path).presigned_url(new_image_id(), 60) is None


def test_unreachable_store_fails_fast_with_a_storage_error() -> None:
    store = closed_port_store()
    started = time.monotonic()
    message = "could not store the image: the image store is unreachable"
    with pytest.raises(StorageError, match=message) as err:
        store.write(new_image_id(), PNG)
    assert time.monotonic() - started < 5
    assert type(err.value.__cause__).__module__.startswith("botocore")
    for call in (store.check, lambda: store.open(new_image_id()), lambda: list(store.stored_ids())):
        with pytest.raises(StorageError, match="unreachable"):
            call()


def test_wrong_credentials_and_missing_bucket_are_told_apart(
    s3_server: S3Server,  # noqa: F811
    bucket: str,
) -> None:
    s3_store(s3_server, bucket).check()
    with pytest.raises(StorageError, match="has no bucket 'not-there'"):
        s3_store(s3_server, "not-there").check()
    wrong = s3_store(s3_server, bucket, s3_secret_access_key="wrong")
    with pytest.raises(StorageError, match=r"refused access \(SignatureDoesNotMatch\)"):
        wrong.write(new_image_id(), PNG)


# --- The sweep, on both stores ------------------------------------------------------------------


def _row(image_id: str, expires_at: float) -> ImageRow:
    return ImageRow(
        id=image_id,
        created_at=time.time(),
        expires_at=expires_at,
        model="cogview-4",
        prompt="p",
        width=512,
        height=512,
        quality="standard",
        steps=2,
        guidance_scale=3.5,
        seed=1,
        user_id=None,
        request_id="r",
        duration_s=0.1,
        response_format="url",
    )


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    if request.param == "local":
        return LocalImageStore(tmp_path / "images")
    server: S3Server = request.getfixturevalue("s3_server")
    return s3_store(server, server.new_bucket())


@pytest.fixture
def metadata(tmp_path: Path) -> MetadataStore:
    store = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}")
    store.create_schema()
    return store


def _stored(store: ImageStore, metadata: MetadataStore, expires_at: float) -> str:
    image_id = new_image_id()
    store.write(image_id, PNG)
    metadata.add(_row(image_id, expires_at))
    return image_id


def test_sweep_removes_expired_images_and_rows_and_keeps_live_ones(
    any_store: ImageStore, metadata: MetadataStore
) -> None:
    now = time.time()
    expired = [_stored(any_store, metadata, now - 1) for _ in range(3)]
    live = _stored(any_store, metadata, now + 3600)
    report = sweep(any_store, metadata)
    assert (report.expired, report.orphan_files) == (3, 0)
    assert not any(any_store.exists(image_id) for image_id in expired)
    assert metadata.known_ids([*expired, live]) == {live}
    assert any_store.exists(live)


def test_sweep_removes_orphans_only_after_the_grace(
    any_store: ImageStore, metadata: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = _stored(any_store, metadata, time.time() + 3600)
    orphan = new_image_id()
    any_store.write(orphan, PNG)
    assert sweep(any_store, metadata).orphan_files == 0  # may be a write whose row is coming
    assert any_store.exists(orphan)
    # An S3 object's age is its LastModified, which a test cannot backdate: shorten the grace.
    monkeypatch.setattr(sweep_module, "ORPHAN_GRACE_S", 0.0)
    assert sweep(any_store, metadata).orphan_files == 1
    assert not any_store.exists(orphan) and any_store.exists(kept)


def test_a_failure_between_image_and_row_never_leaves_a_live_row_without_its_image(
    any_store: ImageStore, metadata: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images go first, then rows: a crash in between leaves expired rows (which the /files route
    refuses: tests/api/test_s3_images.py), and the next sweep finishes them."""
    expired = _stored(any_store, metadata, time.time() - 1)
    live = _stored(any_store, metadata, time.time() + 3600)

    def database_down(self: MetadataStore, ids: list[str]) -> int:
        raise StorageError("database error while trying to delete image metadata")

    with monkeypatch.context() as patch:
        patch.setattr(MetadataStore, "delete", database_down)
        with pytest.raises(StorageError):
            sweep(any_store, metadata)
    assert not any_store.exists(expired)
    row = metadata.get(expired)
    assert row is not None and row.expires_at <= time.time()  # what is left is an expired row
    assert any_store.exists(live)

    assert sweep(any_store, metadata).expired == 1
    assert metadata.get(expired) is None and any_store.exists(live)


def test_an_unreachable_store_leaves_rows_for_the_next_sweep(metadata: MetadataStore) -> None:
    image_id = new_image_id()
    metadata.add(_row(image_id, time.time() - 1))
    with pytest.raises(StorageError, match="unreachable"):
        sweep(closed_port_store(), metadata)
    assert metadata.get(image_id) is not None


def test_settings_refuse_bad_s3_configuration() -> None:
    with pytest.raises(ValueError, match="s3://BUCKET"):
        Settings(storage={"image_store": "https://bucket/prefix"})
    with pytest.raises(ValueError, match="or neither"):
        Settings(storage={"image_store": "s3://bucket", "s3_access_key_id": "k"})
    with pytest.raises(ValueError, match="presigned_urls needs"):
        Settings(storage={"presigned_urls": True})
    assert Settings(storage={"image_store": ""}).storage.image_store is None
