"""Scale-out on a real local Ray cluster: 2 tiny-model replicas behind the cogserve ingress."""

from __future__ import annotations

import base64
import importlib.util
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from tests.helpers import IMAGES, pixels, png_size
from tests.lora_helpers import make

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra"),
]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("ray") / "data"
    loras = data_dir.parent / "loras"
    if importlib.util.find_spec("peft") is not None:
        make(models_dir, loras / "ink", seed=1)  # every replica reads the same folder
    loras.mkdir(exist_ok=True)
    env = {
        "COGSERVE_MODEL__HD_STEPS": "12",
        "COGSERVE_SCHEDULER__MAX_BATCH_SIZE": "1",
        "COGSERVE_LORA__DIR": str(loras),
    }
    server = start_server(data_dir, models_dir, "--ray", "--replicas", "2", timeout=240, env=env)
    yield server
    assert stop_server(server.process) == 0, server.log.read_text()[-3000:]


ASYNC = "/api/paas/v4/async/images/generations"


def post(server: Server, index: int, **body: Any) -> httpx.Response:
    payload = {"model": "cogview-4", "prompt": f"harbour {index}", "size": "512x512", **body}
    return httpx.post(f"{server.url}{IMAGES}", json=payload, timeout=180)


def replicas(server: Server) -> dict[str, dict[str, int]]:
    ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
    assert ready["device"].startswith("ray:")
    found: dict[str, dict[str, int]] = ready["replicas"]
    return found


def test_both_replicas_take_work_under_concurrent_load(ray_server: Server) -> None:
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: post(ray_server, i), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    for response in responses[:2]:
        image = httpx.get(response.json()["data"][0]["url"], timeout=10)
        assert png_size(image.content) == (512, 512)
    seen = replicas(ray_server)
    assert len(seen) == 2, seen
    assert all(replica["images"] > 0 for replica in seen.values()), seen


def test_loras_cross_to_the_replicas_and_apply_there(ray_server: Server) -> None:
    pytest.importorskip("peft")
    body = {"seed": 3, "response_format": "b64_json", "watermark_enabled": False}

    def picture(**extra: Any) -> Any:
        response = post(ray_server, 0, **body, **extra)
        assert response.status_code == 200, response.text
        return pixels(base64.b64decode(response.json()["data"][0]["b64_json"])).astype(int)

    inked = picture(loras=[{"name": "ink", "scale": 1.0}])
    assert abs(inked - picture()).max() > 20
    # Whichever replica takes it (the second call may land on the other one), the same picture.
    assert (inked == picture(loras=[{"name": "ink", "scale": 1.0}])).all()
    unknown = post(ray_server, 0, loras=[{"name": "oil"}])
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "1211"


def test_an_over_long_prompt_is_counted_by_a_replica_and_refused(ray_server: Server) -> None:
    # The ingress has no tokenizer: it asks a replica for the count, before anything is queued.
    response = post(ray_server, 0, prompt="x" * 3990)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "1261" and "3992 tokens" in error["message"] and "1024" in error["message"]


def test_queued_async_jobs_report_their_place_in_their_replicas_queue(ray_server: Server) -> None:
    body = {"model": "cogview-4", "prompt": "a lighthouse", "size": "1024x1024", "quality": "hd"}
    ids = []
    for index in range(6):  # 2 replicas run one each; the other 4 wait, 2 per replica
        submitted = httpx.post(f"{ray_server.url}{ASYNC}", json={**body, "seed": index}, timeout=10)
        assert submitted.status_code == 200, submitted.text
        ids.append(submitted.json()["id"])
    positions: set[int] = set()
    finished: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 180
    while len(finished) < len(ids):
        assert time.monotonic() < deadline, "jobs still PROCESSING"
        for job_id in set(ids) - set(finished):
            result = httpx.get(f"{ray_server.url}/api/paas/v4/async-result/{job_id}", timeout=10).json()
            if result["task_status"] != "PROCESSING":
                finished[job_id] = result
            elif result.get("queue_position") is not None:
                assert result["state"] == "queued" and result["progress"] == 0, result
                positions.add(result["queue_position"])
        time.sleep(0.1)
    assert all(result["task_status"] == "SUCCESS" for result in finished.values()), finished
    assert 1 in positions and positions <= {1, 2, 3, 4}, positions


def test_a_killed_replica_loses_no_request(ray_server: Server) -> None:
    victim = next(iter(replicas(ray_server).values()))["pid"]
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(post, ray_server, i, size="1024x1024", quality="hd") for i in range(10)]
        time.sleep(2.0)  # work queued and running on both replicas
        os.kill(victim, signal.SIGKILL)
        responses = [future.result() for future in futures]
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    for response in responses:
        image = httpx.get(response.json()["data"][0]["url"], timeout=10)
        assert png_size(image.content) == (1024, 1024)
    # Requests on the killed replica were asked again of the other one.
    assert "asking another replica" in ray_server.log.read_text()
    # Ray starts a replacement; the service keeps answering meanwhile.
    assert post(ray_server, 99).status_code == 200
