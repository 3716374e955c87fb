"""Two real `cogserve serve` processes on ONE PostgreSQL database and ONE S3 store act as one service.

Each server has its own data dir (as on two machines) and shares the database, the image bucket and
the server key. hd at 1024x1024 with 30 tiny steps takes seconds on a CPU, so the admitted requests
are still running while the others arrive at either server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.components.postgres import PostgresServer, postgres_server  # noqa: F401  (fixture)
from tests.components.s3 import S3Server, s3_server  # noqa: F401  (fixture)
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.test_cli import run
from tests.helpers import IMAGES, png_size

pytestmark = pytest.mark.slow


@dataclass
class Pair:
    servers: list[Server]
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def two_servers(
    tmp_path_factory: pytest.TempPathFactory,
    models_dir: Path,
    postgres_server: PostgresServer,  # noqa: F811
    s3_server: S3Server,  # noqa: F811
) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("two-hosts")
    name, database_url = postgres_server.create_database()
    storage = s3_server.storage_settings(s3_server.new_bucket())
    env = {
        "COGSERVE_STORAGE__DATABASE_URL": database_url,
        "COGSERVE_AUTH__SERVER_KEY_FILE": str(root / "server.key"),
        "COGSERVE_MODEL__HD_STEPS": "30",
        **{f"COGSERVE_STORAGE__{field.upper()}": str(value) for field, value in storage.items()},
    }
    created = run(
        models_dir, "keys", "create", "--name", "two-at-once", "--rpm", "0", "--concurrency", "2",
        "--data-dir", str(root / "a"), **env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    servers: list[Server] = []
    try:
        for host in ("a", "b"):
            servers.append(start_server(root / host, models_dir, env=env))
        yield Pair(servers, created.stdout.strip())
    finally:
        for server in servers:
            stop_server(server.process)
        postgres_server.drop_database(name)


def test_an_image_and_a_job_made_through_one_are_served_by_the_other(two_servers: Pair) -> None:
    a, b = two_servers.servers
    body = {"model": "cogview-4", "prompt": "two hosts", "size": "768x512"}
    made = httpx.post(f"{a.url}{IMAGES}", json=body, headers=two_servers.headers, timeout=120)
    assert made.status_code == 200, made.text
    image_id = made.json()["data"][0]["url"].rsplit("/", 1)[1]
    served = httpx.get(f"{b.url}/files/{image_id}", timeout=30)
    assert served.status_code == 200 and png_size(served.content) == (768, 512)
    assert not list((b.data_dir / "images").rglob("*.png"))  # from the bucket, not B's disk

    job = httpx.post(
        f"{a.url}/api/paas/v4/async/images/generations", json=body, headers=two_servers.headers, timeout=30
    ).json()
    deadline = time.monotonic() + 120
    while True:
        result = httpx.get(
            f"{b.url}/api/paas/v4/async-result/{job['id']}", headers=two_servers.headers, timeout=30
        ).json()
        if result["task_status"] != "PROCESSING":
            break
        assert time.monotonic() < deadline, result
        time.sleep(0.2)
    assert result["task_status"] == "SUCCESS"
    assert result["data"][0]["url"].startswith(b.url)  # linked through the host that was asked


def test_a_key_concurrency_limit_holds_across_two_server_processes(two_servers: Pair) -> None:
    servers = two_servers.servers
    body = {"model": "cogview-4", "prompt": "a lighthouse at dusk", "size": "1024x1024", "quality": "hd"}
    start = threading.Barrier(20)

    def post(index: int) -> tuple[int, httpx.Response]:
        server = servers[index % 2]
        with httpx.Client(timeout=300) as client:
            start.wait()
            response = client.post(f"{server.url}{IMAGES}", json=body, headers=two_servers.headers)
        return index % 2, response

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(post, range(20)))

    codes = sorted("ok" if r.status_code == 200 else r.json()["error"]["code"] for _, r in results)
    assert codes == ["1302"] * 18 + ["ok"] * 2
    # Each server refused requests while the two admitted ones (on either server) were running.
    refused_by = {server for server, r in results if r.status_code == 429}
    assert refused_by == {0, 1}
    limited = next(r for _, r in results if r.status_code == 429)
    assert limited.headers["retry-after"] == "1"
    assert "already has 2 requests in flight (limit 2)" in limited.json()["error"]["message"]
