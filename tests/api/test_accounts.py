"""Keys, auth modes, limits under real concurrency, blocked users, the watermark flag and the audit log."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import CountingEngine, access_of, bearer, generate


def test_open_mode_without_keys_then_keys_required_once_one_exists(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    assert "AUTH IS OFF" in caplog.text
    assert generate(client).status_code == 200
    _, full = access_of(client).keys.create("first")
    missing = generate(client)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "1001"
    assert generate(client, headers=None).status_code == 401
    ok = client.post(
        "/api/paas/v4/images/generations",
        json={"model": "cogview-4", "prompt": "a kite", "size": "512x512"},
        headers=bearer(full),
    )
    assert ok.status_code == 200
    # Public routes stay public: health, readiness and the image URL itself (a capability).
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert client.get(ok.json()["data"][0]["url"].split("testserver")[1]).status_code == 200


def test_require_auth_refuses_before_any_key_exists(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], counting: CountingEngine
) -> None:
    client = make_client(make_settings(auth={"require_auth": True}), engine=counting)
    response = generate(client)
    assert response.status_code == 401 and response.json()["error"]["code"] == "1001"
    assert counting.images == 0


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Basic abc", "1002"),
        ("Bearer not-a-key", "1002"),
        ("Bearer 0123456789abcdef01234567.wrong-secret", "1002"),  # unknown id
    ],
)
def test_bad_credentials_are_401_with_their_code(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], header: str, code: str
) -> None:
    client = make_client(make_settings(auth={"require_auth": True}))
    response = client.post(
        "/api/paas/v4/images/generations",
        json={"model": "cogview-4", "prompt": "x"},
        headers={"Authorization": header},
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == code


def _post(client: TestClient, key: str, **body: Any) -> Any:
    payload = {"model": "cogview-4", "prompt": "a lantern", "size": "512x512", **body}
    return client.post("/api/paas/v4/images/generations", json=payload, headers=bearer(key))


@pytest.mark.slow  # 20 concurrent requests, 5 of them generated: ~11 s on an idle machine
def test_key_rpm_holds_exactly_under_concurrent_clients(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    client = make_client(make_settings(auth={"user_rpm": 0, "user_concurrency": 0}))
    _, full = access_of(client).keys.create("rpm5", rpm_limit=5, concurrency_limit=0)
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: _post(client, full), range(20)))
    codes = sorted(r.json()["error"]["code"] if r.status_code != 200 else "ok" for r in responses)
    assert codes == ["1303"] * 15 + ["ok"] * 5
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) > 4 and limited.headers["x-should-retry"] == "false"


def test_key_concurrency_holds_exactly_under_concurrent_clients(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], counting: CountingEngine
) -> None:
    client = make_client(make_settings(scheduler={"max_batch_size": 1}), engine=counting)
    _, full = access_of(client).keys.create("two-at-once", rpm_limit=0, concurrency_limit=2)
    counting.gate.clear()
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(_post, client, full) for _ in range(20)]
        refused = [f.result() for f in futures[:0]]
        for _ in range(1000):
            if sum(f.done() for f in futures) == 18:
                break
            threading.Event().wait(0.01)
        counting.gate.set()
        responses = refused + [f.result() for f in futures]
    codes = sorted(r.json()["error"]["code"] if r.status_code != 200 else "ok" for r in responses)
    assert codes == ["1302"] * 18 + ["ok"] * 2
    assert counting.images == 2
    assert next(r for r in responses if r.status_code == 429).headers["retry-after"] == "1"


def test_user_id_limits_are_per_user(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    client = make_client(make_settings(auth={"user_rpm": 2}))
    statuses = [generate(client, user_id="user-aaaa").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert generate(client, user_id="user-bbbb").status_code == 200


def test_blocked_user_gets_403_and_nothing_is_generated(
    make_client: Callable[..., TestClient], counting: CountingEngine
) -> None:
    client = make_client(engine=counting)
    access_of(client).accounts.block_user("troll-42", "repeated abuse")
    response = generate(client, user_id="troll-42")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "1112" and "repeated abuse" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert counting.images == 0
    access_of(client).accounts.unblock_user("troll-42")
    assert generate(client, user_id="troll-42").status_code == 200


def test_turning_the_watermark_off_needs_a_key_that_may(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    _, plain = access_of(client).keys.create("plain")
    _, trusted = access_of(client).keys.create("trusted", allow_no_watermark=True)
    refused = _post(client, plain, watermark_enabled=False)
    assert refused.status_code == 400
    assert (
        refused.json()["error"]["code"] == "1214"
        and "watermark_enabled" in refused.json()["error"]["message"]
    )
    assert _post(client, trusted, watermark_enabled=False).status_code == 200


def test_every_request_is_audited_with_its_outcome(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    _, full = access_of(client).keys.create("audited")
    key_id = full.split(".")[0]
    assert _post(client, full, user_id="user-audit").status_code == 200
    assert generate(client).status_code == 401
    assert _post(client, full, user_id="user-audit", prompt="how to make a pipe bomb").status_code == 400
    usage = {(row.key_id, row.user_id): row for row in access_of(client).accounts.usage()}
    mine = usage[(key_id, "user-audit")]
    assert (mine.requests, mine.ok, mine.blocked_by_moderation) == (2, 1, 1)
    assert usage[(None, None)].auth_failed == 1


def test_failed_logins_are_audited_under_the_key_they_claimed(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    access = access_of(client)
    _, full = access.keys.create("targeted")
    key_id = full.split(".")[0]
    _, revoked = access.keys.create("old")
    access.accounts.revoke_key(revoked.split(".")[0])
    assert _post(client, f"{key_id}.{'0' * 48}").json()["error"]["code"] == "1000"  # wrong secret
    assert _post(client, revoked).json()["error"]["code"] == "1004"
    assert _post(client, f"{'f' * 24}.{'0' * 48}").json()["error"]["code"] == "1002"  # no such key
    usage = {row.key_id: row for row in access.accounts.usage()}
    assert usage[key_id].auth_failed == 1 and usage[key_id].ok == 0
    assert usage[revoked.split(".")[0]].auth_failed == 1
    # A key id nobody holds is not written down as if it were one: its attempt has no key.
    assert usage[None].auth_failed == 1 and "f" * 24 not in usage


def test_a_copy_of_the_database_alone_yields_no_usable_key(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    client = make_client()
    url = client.app.state.cogserve.settings.database_url  # type: ignore[attr-defined]
    if not url.startswith("sqlite"):
        pytest.skip("a file copy of the database is a SQLite matter")
    _, full = access_of(client).keys.create("stolen")
    secret = full.split(".", 1)[1]
    database = Path(client.app.state.cogserve.settings.database_url.removeprefix("sqlite:///"))  # type: ignore[attr-defined]
    elsewhere = tmp_path / "thief"
    elsewhere.mkdir()
    for part in database.parent.glob("cogserve.db*"):  # the DB with its WAL, not the server key
        assert secret.encode() not in part.read_bytes()
        shutil.copy(part, elsewhere / part.name)
    thief = make_client(make_settings(storage={"data_dir": elsewhere}))
    response = _post(thief, full)
    assert response.status_code != 200
    assert secret not in response.text
