"""GET /files/{id}.png, expiry and the sweep, and that files and rows stay in step."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, update

from cogserve.errors import StorageError
from cogserve.storage import ImageRow, LocalImageStore, MetadataStore, new_image_id
from cogserve.storage.sweep import ORPHAN_GRACE_S
from tests.helpers import generate, image_id_of, metadata_of, settings_of


def make_image(client: TestClient) -> str:
    response = generate(client)
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["url"]


def expire(client: TestClient, url: str) -> None:
    """Move an image's expiry into the past, straight in the database."""
    engine = create_engine(settings_of(client).database_url)
    with engine.begin() as connection:
        connection.execute(
            update(ImageRow).where(ImageRow.id == image_id_of(url)).values(expires_at=time.time() - 1)
        )
    engine.dispose()


def test_image_is_served_with_cache_headers(client: TestClient) -> None:
    url = make_image(client)
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    max_age = int(response.headers["cache-control"].split("max-age=")[1].split(",")[0])
    assert 29 * 86400 < max_age <= 30 * 86400


def test_image_ids_are_long_and_random(client: TestClient) -> None:
    ids = {image_id_of(make_image(client)) for _ in range(3)}
    assert len(ids) == 3
    assert all(len(image_id) == 32 for image_id in ids)  # 24 random bytes, base64url


UNKNOWN_OR_MALFORMED = [
    "/files/" + "A" * 32 + ".png",  # well-formed, unknown
    "/files/" + "A" * 31 + ".png",  # too short
    "/files/" + "A" * 32,  # no extension
    "/files/" + "A" * 32 + ".jpg",
    "/files/..%2F..%2Fetc%2Fpasswd",
    "/files/%2e%2e%2fcogserve.db",
    "/files/../cogserve.db",
    "/files/....png",
    "/files/" + "A" * 30 + "..png",
    "/files/%00" + "A" * 31 + ".png",
    "/files/",
]


def test_unknown_or_malformed_ids_are_404_in_the_envelope(client: TestClient) -> None:
    # Every path against one app and one image: a test case per path paid for a generation each.
    make_image(client)  # so there is something on disk a traversal could reach
    answers = {path: client.get(path) for path in UNKNOWN_OR_MALFORMED}
    wrong = {
        path: (response.status_code, response.text)
        for path, response in answers.items()
        if response.status_code != 404 or response.json()["error"]["code"] != "1222"
    }
    assert wrong == {}


def test_expired_image_is_404_then_swept_while_live_ones_stay(client: TestClient) -> None:
    old, live = make_image(client), make_image(client)
    expire(client, old)
    assert client.get(old).status_code == 404
    assert client.get(live).status_code == 200

    files = LocalImageStore(settings_of(client).images_dir)
    assert files.exists(image_id_of(old))
    report = client.app.state.cogserve.service.sweep()  # type: ignore[attr-defined]
    assert report.expired == 1
    assert not files.exists(image_id_of(old))
    assert files.exists(image_id_of(live))
    store = metadata_of(client)
    assert store.get(image_id_of(old)) is None and store.get(image_id_of(live)) is not None
    store.close()
    assert client.get(live).status_code == 200


def test_the_server_sweeps_on_its_own(
    make_client: Callable[..., TestClient], make_settings: Callable[..., object]
) -> None:
    client = make_client(make_settings(storage={"sweep_interval_s": 0.1}))
    url = make_image(client)
    expire(client, url)
    files = LocalImageStore(settings_of(client).images_dir)
    deadline = time.monotonic() + 5
    while files.exists(image_id_of(url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not files.exists(image_id_of(url))


def test_sweep_removes_orphan_files_and_stale_temp_files_after_a_grace(client: TestClient) -> None:
    settings = settings_of(client)
    kept = make_image(client)
    files = LocalImageStore(settings.images_dir)
    orphan, fresh_orphan = new_image_id(), new_image_id()
    files.write(orphan, b"not referenced")
    files.write(fresh_orphan, b"maybe a write whose row is being committed")
    temp = files.path_for(orphan).parent / f".{orphan}.abc.tmp"
    temp.write_bytes(b"half")
    old = time.time() - ORPHAN_GRACE_S - 10
    for path in (files.path_for(orphan), temp, files.path_for(image_id_of(kept))):
        os.utime(path, (old, old))

    report = client.app.state.cogserve.service.sweep()  # type: ignore[attr-defined]
    assert (report.orphan_files, report.temp_files) == (1, 1)
    assert not files.exists(orphan) and not temp.exists()
    assert files.exists(fresh_orphan)
    assert client.get(kept).status_code == 200


def test_a_failed_row_insert_leaves_no_file(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_add(self: MetadataStore, row: object) -> None:
        raise StorageError("database error while trying to record the image")

    monkeypatch.setattr(MetadataStore, "add", broken_add)
    response = generate(client)
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "500",
        "message": "database error while trying to record the image",
    }
    assert response.headers["x-should-retry"] == "false"
    assert list(settings_of(client).images_dir.glob("**/*.png")) == []


def test_a_failed_file_write_leaves_no_row_and_no_partial_file(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(target, data) -> None:  # type: ignore[no-untyped-def]
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / f".{target.stem}.x.tmp").write_bytes(data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cogserve.storage.files.atomic_write", full_disk)
    response = generate(client)
    assert response.status_code == 500
    assert "No space left on device" in response.json()["error"]["message"]
    assert list(settings_of(client).images_dir.glob("**/*.png")) == []
    store = metadata_of(client)
    assert store.expired_ids(now=time.time() + 10**9) == []
    store.close()
