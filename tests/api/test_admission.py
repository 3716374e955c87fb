"""What clients see of the scheduler: 429 when the queue is full, 504 past the deadline, warm-up."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from cogserve.engine import BatchItem, Engine, GenerationOutput
from cogserve.engine.runner import PipelineEngine
from cogserve.settings import ModelSettings
from tests.conftest import wait_ready
from tests.helpers import DelegatingEngine, generate


class GatedEngine(DelegatingEngine):
    """The real engine behind a gate the test opens."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.gate.set()
        self.busy = threading.Event()

    def warmup(self) -> None:
        self.inner.warmup()
        self.gate.wait(30)  # lets a test look at /readyz while warm-up is still going on

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        self.busy.set()
        self.gate.wait(30)
        return self.inner.generate_batch(items)


def test_full_queue_is_429_1305_with_retry_after(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], shared_engine: Engine
) -> None:
    engine = GatedEngine(shared_engine)
    client = make_client(make_settings(scheduler={"max_queue": 1, "max_batch_size": 1}), engine=engine)
    engine.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(generate, client, prompt="running")
        assert engine.busy.wait(10)
        queued = pool.submit(generate, client, size="768x512")
        for _ in range(500):
            if client.get("/readyz").json()["queued"] == 1:
                break
            threading.Event().wait(0.01)
        refused = generate(client)
        engine.gate.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "1305"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-should-retry"] == "true"


def test_request_past_its_deadline_is_504_and_not_retried(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], shared_engine: Engine
) -> None:
    engine = GatedEngine(shared_engine)
    client = make_client(make_settings(scheduler={"request_timeout_s": 3.0}), engine=engine)
    engine.gate.clear()
    threading.Timer(4.0, engine.gate.set).start()
    response = generate(client)
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "1230" and "request_timeout_s" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    engine.gate.wait(5)
    for _ in range(500):  # the abandoned call stops at its first step
        if client.get("/readyz").json()["running"] == 0:
            break
        threading.Event().wait(0.01)
    assert generate(client).status_code == 200  # the server goes on serving


def test_every_warmup_bucket_runs_before_ready(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], models_dir: Path
) -> None:
    buckets = ["512x512:2", "768x512:3", "512x1024"]
    inner = PipelineEngine(
        ModelSettings(builtin_dir=models_dir, builtin="tiny-random", warmup_sizes=buckets, standard_steps=4),
        models_dir,
    )
    ran: list[tuple[int, int, int]] = []
    real_generate = inner.generate_batch

    def recording(items: Sequence[BatchItem]) -> list[GenerationOutput]:
        ran.append((items[0].params.width, items[0].params.height, items[0].params.steps))
        return real_generate(items)

    inner.generate_batch = recording  # type: ignore[method-assign]
    engine = GatedEngine(inner)
    engine.gate.clear()
    client = make_client(make_settings(model={"warmup": True}), engine=engine, ready=False)
    for _ in range(6000):  # up to a minute on a busy machine
        if len(ran) == 3:
            break
        threading.Event().wait(0.01)
    assert ran == [(512, 512, 2), (768, 512, 3), (512, 1024, 4)]
    assert client.get("/readyz").status_code == 503  # warm-up not over until warmup() returns
    engine.gate.set()
    wait_ready(client.app)  # type: ignore[arg-type]
    assert client.get("/readyz").status_code == 200


ASYNC = "/api/paas/v4/async/images/generations"


def _job_status(client: TestClient, job_id: str) -> dict[str, Any]:
    for _ in range(6000):
        body: dict[str, Any] = client.get(f"/api/paas/v4/async-result/{job_id}").json()
        if body["task_status"] != "PROCESSING":
            return body
        threading.Event().wait(0.01)
    raise AssertionError(f"job {job_id} did not finish")


def test_concurrent_async_submits_past_the_queue_are_429_at_submit_not_failed_jobs(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], shared_engine: Engine
) -> None:
    engine = GatedEngine(shared_engine)
    client = make_client(make_settings(scheduler={"max_queue": 2, "max_batch_size": 1}), engine=engine)
    engine.gate.clear()
    body = {"model": "cogview-4", "prompt": "a paper boat", "size": "512x512"}
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: client.post(ASYNC, json=body), range(20)))
        # Two places in the queue, and at most one image taken out of it to run.
        accepted = [answer.json()["id"] for answer in answers if answer.status_code == 200]
        assert 2 <= len(accepted) <= 3, [answer.text for answer in answers]
        # Once one runs, its place is free again: one more submit takes it, then the queue is full.
        assert engine.busy.wait(10)
        while len(accepted) < 3 and (top_up := client.post(ASYNC, json=body)).status_code == 200:
            accepted.append(top_up.json()["id"])
        assert len(accepted) == 3
        sync = list(pool.map(lambda _: generate(client), range(4)))  # the queue is full for these too
    refused = [answer for answer in answers if answer.status_code != 200]
    assert {(answer.status_code, answer.json()["error"]["code"]) for answer in refused} == {(429, "1305")}
    assert {(answer.status_code, answer.json()["error"]["code"]) for answer in sync} == {(429, "1305")}
    engine.gate.set()
    assert [_job_status(client, job_id)["task_status"] for job_id in accepted] == ["SUCCESS"] * len(accepted)
    assert generate(client).status_code == 200  # every place was given back
