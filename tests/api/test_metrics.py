"""/metrics: the numbers an operator watches move as requests run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_jobs import finished, submit, wait_for
from tests.helpers import IMAGES, generate


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_histograms_move_as_requests_run(client: TestClient) -> None:
    before = scrape(client)
    assert value(before, "cogserve_ready") == 1.0
    assert value(before, "cogserve_queue_depth") == 0.0
    assert generate(client).status_code == 200
    assert generate(client, size="bad").status_code == 400
    assert generate(client, prompt="how to make a pipe bomb").status_code == 400
    job = submit(client).json()
    assert wait_for(client, job["id"], finished)["task_status"] == "SUCCESS"
    assert client.get("/files/nope.png").status_code == 404
    after = scrape(client)

    def grew(name: str, by: float, **labels: str) -> None:
        assert value(after, name, **labels) - value(before, name, **labels) == by, (name, labels)

    route = {"route": IMAGES, "method": "POST"}
    grew("cogserve_requests_total", 1, **route, status="200", code="")
    grew("cogserve_requests_total", 1, **route, status="400", code="1214")
    grew("cogserve_requests_total", 1, **route, status="400", code="1301")
    grew("cogserve_requests_total", 1, route="/files/{name}", method="GET", status="404", code="1222")
    grew("cogserve_request_duration_seconds_count", 3, route=IMAGES)
    grew("cogserve_images_generated_total", 2)  # the sync one and the job
    grew("cogserve_moderation_blocks_total", 1, stage="input")
    grew("cogserve_batch_size_count", 2)
    grew("cogserve_step_duration_seconds_count", 2)
    grew("cogserve_queue_wait_seconds_count", 2)
    grew("cogserve_async_jobs_finished_total", 1, status="SUCCESS")
    assert value(after, "cogserve_async_jobs_active") == 0.0


def test_no_gpu_memory_series_on_a_cpu(client: TestClient) -> None:
    assert not any(name.startswith("cogserve_gpu") for name, _ in scrape(client))


def test_metrics_stay_public_when_auth_is_on(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    client = make_client(make_settings(auth={"require_auth": True}))
    assert generate(client).status_code == 401
    refused = {"route": IMAGES, "method": "POST", "status": "401", "code": "1001"}
    assert value(scrape(client), "cogserve_requests_total", **refused) == 1
