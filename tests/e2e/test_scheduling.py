"""The scheduler behind a live server: real concurrent HTTP clients, batching, and clients that leave."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import start_server, stop_server
from tests.helpers import IMAGES, png_size

# Each test starts its own server and runs real concurrent clients against it.
pytestmark = pytest.mark.slow


def _post(url: str, size: str = "512x512", timeout: float = 120, **body: object) -> httpx.Response:
    payload = {"model": "cogview-4", "prompt": "a lighthouse at dusk", "size": size, **body}
    return httpx.post(f"{url}{IMAGES}", json=payload, timeout=timeout)


def test_concurrent_clients_are_batched_and_all_served(tmp_path: Path, models_dir: Path) -> None:
    server = start_server(
        tmp_path / "data", models_dir, "--max-batch-size", "4", "--max-batch-wait-ms", "200"
    )
    try:
        with ThreadPoolExecutor(8) as pool:
            sizes = ["512x512"] * 6 + ["768x512"] * 2
            responses = list(pool.map(lambda size: _post(server.url, size), sizes))
        assert [r.status_code for r in responses] == [200] * 8
        for response, size in zip(responses, sizes, strict=True):
            png = httpx.get(response.json()["data"][0]["url"], timeout=30).content
            assert png_size(png) == tuple(int(side) for side in size.split("x"))
        stats = httpx.get(f"{server.url}/readyz").json()
        assert stats["batched_images"] == 8
        assert stats["batches"] < 8  # at least one call carried several images
    finally:
        stop_server(server.process)


def test_client_that_leaves_stops_its_work_and_leaves_nothing_stored(
    tmp_path: Path, models_dir: Path
) -> None:
    # hd = 200 steps at 1024x1024: about a minute on this CPU, unless the server stops when the client goes.
    server = start_server(tmp_path / "data", models_dir, env={"COGSERVE_MODEL__HD_STEPS": "200"})
    try:
        with pytest.raises(httpx.ReadTimeout):
            _post(server.url, size="1024x1024", quality="hd", timeout=1.5)
        started = time.monotonic()
        quick = _post(server.url)
        assert quick.status_code == 200
        assert time.monotonic() - started < 10  # the abandoned call did not run on
        stored = [path.name for path in (tmp_path / "data" / "images").rglob("*.png")]
        assert len(stored) == 1 and quick.json()["data"][0]["url"].endswith(stored[0])
    finally:
        stop_server(server.process)
    assert " 499 " in server.log.read_text()  # the access log shows the abandoned request
