"""Keys made with the CLI, used by the real zhipuai SDK against a live server; blocks, usage, watermarks."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.test_cli import run
from tests.helpers import IMAGES, download_png, open_png

# A live server for the module, keys made with the cogserve command (a subprocess each time).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> tuple[Server, str]:
    data_dir = tmp_path_factory.mktemp("secured") / "data"
    created = run(
        models_dir, "keys", "create", "--name", "sdk-tests", "--create", "--data-dir", str(data_dir)
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert "store it now" in created.stderr and key.count(".") == 1
    server = start_server(data_dir, models_dir)
    yield server, key
    stop_server(server.process)


def _sdk(server: Server, key: str, *, use_jwt: bool = False):  # type: ignore[no-untyped-def]
    from zhipuai import ZhipuAI

    return ZhipuAI(
        api_key=key, base_url=f"{server.url}/api/paas/v4", disable_token_cache=not use_jwt, max_retries=0
    )


@pytest.mark.parametrize("use_jwt", [False, True], ids=["raw-key", "jwt"])
def test_zhipuai_sdk_authenticates_both_ways(secured: tuple[Server, str], use_jwt: bool) -> None:
    server, key = secured
    response = _sdk(server, key, use_jwt=use_jwt).images.generations(
        model="cogview-4", prompt="一只可爱的小猫咪", size="512x512"
    )
    assert response.data[0].url.startswith(f"{server.url}/files/")
    assert response.content_filter == [{"role": "user", "level": 3}]


def _status_code(server: Server, authorization: str | None) -> tuple[int, str]:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(
        f"{server.url}{IMAGES}", json={"model": "cogview-4", "prompt": "a cat"}, headers=headers, timeout=60
    )
    return response.status_code, response.json()["error"]["code"]


def test_bad_credentials_get_their_codes(secured: tuple[Server, str]) -> None:
    from zhipuai import APIAuthenticationError

    server, key = secured
    key_id, secret = key.split(".")
    now_ms = int(time.time() * 1000)
    expired = jwt.encode(
        {"api_key": key_id, "exp": now_ms - 120_000, "timestamp": now_ms - 330_000},
        secret,
        algorithm="HS256",
        headers={"alg": "HS256", "sign_type": "SIGN"},
    )
    assert _status_code(server, None) == (401, "1001")
    assert _status_code(server, f"Bearer {expired}") == (401, "1003")
    assert _status_code(server, f"Bearer {key_id}.{secret[::-1]}") == (401, "1000")
    assert _status_code(server, "Bearer nonsense") == (401, "1002")
    with pytest.raises(APIAuthenticationError, match="1000"):
        _sdk(server, f"{key_id}.wrong-secret-wrong-secret").images.generations(
            model="cogview-4", prompt="a cat"
        )


def test_key_limits_hold_for_real_concurrent_clients(secured: tuple[Server, str], models_dir: Path) -> None:
    server, _ = secured
    data = ["--data-dir", str(server.data_dir)]
    key = run(models_dir, "keys", "create", "--rpm", "5", "--concurrency", "0", *data).stdout.strip()

    def post(_: int) -> httpx.Response:
        body = {"model": "cogview-4", "prompt": "a paper boat", "size": "512x512"}
        return httpx.post(
            f"{server.url}{IMAGES}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, range(20)))
    codes = sorted("ok" if r.status_code == 200 else r.json()["error"]["code"] for r in responses)
    assert codes == ["1303"] * 15 + ["ok"] * 5


def test_revoke_block_usage_and_watermark_through_the_cli(
    secured: tuple[Server, str], models_dir: Path, tmp_path: Path
) -> None:
    from zhipuai import APIAuthenticationError, APIStatusError

    server, _ = secured
    data = ["--data-dir", str(server.data_dir)]
    second = run(models_dir, "keys", "create", "--name", "doomed", "--rpm", "7", *data).stdout.strip()
    sdk = _sdk(server, second)
    made = sdk.images.generations(
        model="cogview-4", prompt="a lighthouse", size="512x512", user_id="user-e2e-1"
    )

    # The served PNG carries the label, the invisible mark and the AIGC metadata.
    png = download_png(made.data[0].url)
    saved = tmp_path / "served.png"
    saved.write_bytes(png)
    verified = run(models_dir, "verify-watermark", str(saved))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    image_id = made.data[0].url.rsplit("/", 1)[1].removesuffix(".png")
    assert f"image id {image_id[:8]}" in verified.stdout and "this server" in verified.stdout
    assert "AIGC" in verified.stdout
    jpeg = tmp_path / "served.jpg"
    open_png(png).convert("RGB").save(jpeg, quality=85)
    assert run(models_dir, "verify-watermark", str(jpeg)).returncode == 0

    blocked = run(models_dir, "users", "block", "user-e2e-1", "--reason", "spam", *data)
    assert blocked.returncode == 0, blocked.stderr
    with pytest.raises(APIStatusError, match="1112"):
        sdk.images.generations(model="cogview-4", prompt="a lighthouse", user_id="user-e2e-1")
    assert run(models_dir, "users", "unblock", "user-e2e-1", *data).returncode == 0

    listed = run(models_dir, "keys", "list", *data).stdout
    second_id = second.split(".")[0]
    assert second_id in listed and "doomed" in listed and second.split(".")[1] not in listed
    assert run(models_dir, "keys", "revoke", second_id, *data).returncode == 0
    with pytest.raises(APIAuthenticationError, match="1004"):
        sdk.images.generations(model="cogview-4", prompt="a lighthouse")

    usage = run(models_dir, "usage", "--key", second_id, *data)
    assert usage.returncode == 0, usage.stderr
    line = next(line for line in usage.stdout.splitlines() if "user-e2e-1" in line)
    # requests ok flagged limited blocked auth errors: 2 requests, 1 ok, 1 blocked user.
    assert line.split()[2:9] == ["2", "1", "0", "0", "1", "0", "0"]
