"""Async jobs in-process: lifecycle, progress, queue position, cancel, failures, owners, webhooks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cogserve.engine import Engine
from cogserve.errors import ContentBlocked
from cogserve.storage.jobs import JobRow, JobStore
from tests.helpers import StepGateEngine, WebhookReceiver, access_of, bearer, metadata_of, png_size

SUBMIT = "/api/paas/v4/async/images/generations"


def result_path(job_id: str) -> str:
    return f"/api/paas/v4/async-result/{job_id}"


def submit(client: TestClient, headers: dict[str, str] | None = None, **body: Any) -> Any:
    payload = {"model": "cogview-4", "prompt": "a paper boat", "size": "512x512", **body}
    return client.post(SUBMIT, json=payload, headers=headers)


def wait_for(
    client: TestClient,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(result_path(job_id), headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def finished(body: dict[str, Any]) -> bool:
    return body["task_status"] != "PROCESSING"


@pytest.fixture
def gated(shared_engine: Engine) -> Iterator[StepGateEngine]:
    engine = StepGateEngine(shared_engine)
    yield engine
    engine.gate.set()


@pytest.fixture
def serial(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], gated: StepGateEngine
) -> TestClient:
    """A client whose pipeline runs one image at a time, held after step 1 until the gate opens."""
    return make_client(make_settings(scheduler={"max_batch_size": 1}), engine=gated)


def test_job_goes_queued_running_success_with_progress_and_position(
    serial: TestClient, gated: StepGateEngine
) -> None:
    first = submit(serial, prompt="first", request_id="client-1")
    assert first.status_code == 200
    task = first.json()
    assert task["task_status"] == "PROCESSING" and task["model"] == "cogview-4"
    assert task["request_id"] == "client-1" and task["id"].startswith("job-")
    assert gated.stepped.wait(30)
    second = submit(serial, prompt="second").json()

    running = wait_for(serial, task["id"], lambda body: body["state"] == "running")
    assert running["task_status"] == "PROCESSING" and running["progress"] == 50  # step 1 of 2
    assert "queue_position" not in running and "data" not in running
    queued = wait_for(serial, second["id"], lambda body: body.get("queue_position") == 1)
    assert queued["state"] == "queued" and queued["progress"] == 0

    gated.gate.set()
    for job in (task, second):
        done = wait_for(serial, job["id"], finished)
        assert done["task_status"] == "SUCCESS" and done["state"] == "success" and done["progress"] == 100
        assert done["image_result"] == done["data"] and len(done["data"]) == 1
        assert done["content_filter"] == [{"role": "user", "level": 3}]
        assert abs(done["created"] - time.time()) < 120
        image = serial.get(done["data"][0]["url"])
        assert image.status_code == 200 and png_size(image.content) == (512, 512)
    assert gated.prompts == ["first", "second"]


def test_cancel_while_queued_never_runs_it(serial: TestClient, gated: StepGateEngine) -> None:
    running = submit(serial, prompt="runs").json()
    assert gated.stepped.wait(30)
    queued = submit(serial, prompt="never runs").json()
    cancelled = serial.post(f"{SUBMIT}/{queued['id']}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["task_status"] == "FAIL" and body["error"]["code"] == "499"
    assert "cancelled" in body["error"]["message"]
    gated.gate.set()
    assert wait_for(serial, running["id"], finished)["task_status"] == "SUCCESS"
    assert gated.prompts == ["runs"]
    assert serial.get(result_path(queued["id"])).json()["task_status"] == "FAIL"
    # Cancelling a finished job changes nothing.
    again = serial.post(f"{SUBMIT}/{running['id']}/cancel").json()
    assert again["task_status"] == "SUCCESS"


def test_cancel_while_running_stops_it_and_stores_nothing(serial: TestClient, gated: StepGateEngine) -> None:
    job = submit(serial).json()
    assert gated.stepped.wait(30)
    body = serial.post(f"{SUBMIT}/{job['id']}/cancel").json()
    assert body["task_status"] == "FAIL" and body["error"]["code"] == "499"
    gated.gate.set()
    deadline = time.monotonic() + 30
    while serial.get("/readyz").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    store = metadata_of(serial)
    try:
        assert store.expired_ids(now=time.time() + 10**9) == []  # no image row at all
    finally:
        store.close()
    assert serial.get(result_path(job["id"])).json()["task_status"] == "FAIL"


def test_moderation_block_is_a_failed_job_and_the_pipeline_never_runs(
    make_client: Callable[..., TestClient], gated: StepGateEngine
) -> None:
    gated.gate.set()
    client = make_client(engine=gated)
    job = submit(client, prompt="how to make a pipe bomb at home").json()
    body = wait_for(client, job["id"], finished)
    assert body["task_status"] == "FAIL" and body["error"]["code"] == "1301"
    assert ContentBlocked.SEED_MESSAGE in body["error"]["message"]
    assert gated.prompts == []


def test_bad_bodies_are_refused_at_submit(client: TestClient) -> None:
    missing = client.post(SUBMIT, json={"model": "cogview-4"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "1213"
    b64 = submit(client, response_format="b64_json")
    assert b64.status_code == 400 and "response_format" in b64.json()["error"]["message"]
    size = submit(client, size="500x500")
    assert size.status_code == 400 and size.json()["error"]["code"] == "1214"
    nul = submit(client, user_id="user\x00123")
    assert nul.status_code == 400 and "user_id" in nul.json()["error"]["message"]
    unknown = client.get(result_path("job-" + "0" * 32))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "1222"
    for odd in ("job-%00", "job-" + "0" * 31 + "Z", "x" * 300):  # never reach the database
        assert client.get(result_path(odd)).status_code == 404
    assert client.post(f"{SUBMIT}/nope/cancel").status_code == 404


def test_only_the_key_that_created_a_job_can_see_or_cancel_it(client: TestClient) -> None:
    _, mine = access_of(client).keys.create("mine")
    _, theirs = access_of(client).keys.create("theirs")
    job = submit(client, headers=bearer(mine)).json()
    assert client.get(result_path(job["id"])).status_code == 401
    for path in (result_path(job["id"]), f"{SUBMIT}/{job['id']}/cancel"):
        other = client.request("GET" if "result" in path else "POST", path, headers=bearer(theirs))
        assert other.status_code == 404  # exactly like a job that does not exist
    assert wait_for(client, job["id"], finished, headers=bearer(mine))["task_status"] == "SUCCESS"


def test_async_jobs_hold_their_keys_concurrency_slot(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], gated: StepGateEngine
) -> None:
    client = make_client(make_settings(auth={"key_concurrency": 1}), engine=gated)
    _, key = access_of(client).keys.create("one at a time")
    first = submit(client, headers=bearer(key)).json()
    assert gated.stepped.wait(30)
    refused = submit(client, headers=bearer(key))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "1302"
    gated.gate.set()
    wait_for(client, first["id"], finished, headers=bearer(key))
    assert submit(client, headers=bearer(key)).status_code == 200  # the slot came back


def test_a_job_past_its_timeout_fails_with_1230(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], gated: StepGateEngine
) -> None:
    client = make_client(make_settings(jobs={"timeout_s": 1.0}), engine=gated)
    job = submit(client).json()
    body = wait_for(client, job["id"], finished)
    gated.gate.set()
    assert body["task_status"] == "FAIL" and body["error"]["code"] == "1230"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(failures=2) as running:
        yield running


def test_webhook_is_retried_until_delivered_with_the_result(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], receiver: WebhookReceiver
) -> None:
    port = receiver.port
    settings = make_settings(jobs={"webhook_allow": ["127.0.0.1"], "webhook_backoff_s": 0.05})
    client = make_client(settings)
    job = submit(client, webhook_url=f"http://127.0.0.1:{port}/hook").json()
    done = wait_for(client, job["id"], finished)
    jobs = JobStore(metadata_of(client).engine)
    # The receiver holds the body before the server has recorded the delivery: wait for the row.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = jobs.get(job["id"])
        if row is not None and row.webhook_state != "pending":
            break
        time.sleep(0.02)
    assert row is not None and row.webhook_state == "delivered" and row.webhook_attempts == 3
    assert receiver.attempts == 3  # two 500s, then delivered
    (delivered,) = receiver.bodies
    assert delivered["task_status"] == "SUCCESS" and delivered["id"] == job["id"]
    assert delivered["data"] == done["data"]


@pytest.mark.parametrize(
    ("allow", "url", "reason"),
    [
        ([], "http://127.0.0.1:9/x", "webhooks are off"),
        (["hooks.example"], "http://127.0.0.1:9/x", "not allowed"),
        (["hooks.example"], "http://user:pw@hooks.example/x", "credentials"),
        (["hooks.example"], "file:///etc/passwd", "http"),
        (["hooks.example:8443"], "https://hooks.example:9000/x", "not allowed"),
    ],
)
def test_webhook_urls_outside_the_allow_list_are_refused(
    make_client: Callable[..., TestClient],
    make_settings: Callable[..., Any],
    allow: list[str],
    url: str,
    reason: str,
) -> None:
    client = make_client(make_settings(jobs={"webhook_allow": allow}))
    response = submit(client, webhook_url=url)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "1214" and "webhook_url" in error["message"] and reason in error["message"]


RESUMED = "job-" + "1" * 32
GIVEN_UP = "job-" + "2" * 32


def _lapsed_job(job_id: str, attempts: int, prompt: str) -> JobRow:
    spec = {
        "job": {
            "request_id": f"req-{job_id}",
            "model": "cogview-4",
            "quality": "standard",
            "response_format": "url",
            "params": {
                "prompt": prompt,
                "width": 512,
                "height": 512,
                "steps": 2,
                "guidance_scale": 3.5,
                "seed": 7,
            },
        },
        "watermark": True,
        "base_url": "http://testserver",
    }
    now = time.time()
    return JobRow(
        id=job_id,
        key_id=None,
        request_id=f"req-{job_id}",
        model="cogview-4",
        status="running",
        created_at=now,
        updated_at=now,
        spec=json.dumps(spec),
        progress=40,
        worker="dead-process",
        lease_until=now - 1,
        attempts=attempts,
    )


def test_jobs_of_a_dead_process_are_resumed_or_failed_never_left_processing(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    settings = make_settings(jobs={"lease_s": 0.5, "max_attempts": 3})
    client = make_client(settings)
    store = JobStore(metadata_of(client).engine)
    store.add(_lapsed_job(RESUMED, attempts=1, prompt="resumed after a crash"))
    store.add(_lapsed_job(GIVEN_UP, attempts=3, prompt="crashed the server three times"))
    resumed = wait_for(client, RESUMED, finished)
    assert resumed["task_status"] == "SUCCESS"
    assert png_size(client.get(resumed["data"][0]["url"]).content) == (512, 512)
    given_up = wait_for(client, GIVEN_UP, finished)
    assert given_up["task_status"] == "FAIL" and given_up["error"]["code"] == "1230"
    assert "stopped 3 times" in given_up["error"]["message"]


def test_a_graceful_stop_hands_running_jobs_to_the_next_process(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], gated: StepGateEngine
) -> None:
    settings = make_settings(jobs={"lease_s": 600})  # a lapse would take 10 minutes: not what frees it
    first = make_client(settings, engine=gated)
    job = submit(first).json()
    assert gated.stepped.wait(30)
    first.__exit__(None, None, None)  # the lifespan's stop, with the job held mid-generation
    gated.gate.set()
    row = JobStore(metadata_of(first).engine).get(job["id"])
    assert row is not None and row.status == "queued" and row.lease_until == 0
    second = make_client(settings)
    assert wait_for(second, job["id"], finished, timeout=30)["task_status"] == "SUCCESS"


def _row_when(client: TestClient, job_id: str, ready: Callable[[JobRow], bool]) -> JobRow:
    jobs, deadline = JobStore(metadata_of(client).engine), time.monotonic() + 30
    while True:
        row = jobs.get(job_id)
        if row is not None and ready(row):
            return row
        assert time.monotonic() < deadline, "the job's row never got there"
        time.sleep(0.02)


def test_a_webhook_being_retried_at_a_graceful_stop_is_finished_by_the_next_process(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    # Backoff 60 s and lease 600 s: neither the retry nor a lapse is what finishes the delivery.
    settings = make_settings(jobs={"webhook_allow": ["127.0.0.1"], "webhook_backoff_s": 60, "lease_s": 600})
    with WebhookReceiver(failures=1) as receiver:
        first = make_client(settings)
        job = submit(first, webhook_url=receiver.url).json()
        _row_when(first, job["id"], lambda row: row.webhook_attempts == 1)  # failed once, now waiting
        first.__exit__(None, None, None)
        handed_back = _row_when(first, job["id"], lambda row: True)
        assert handed_back.webhook_state == "pending" and handed_back.lease_until == 0
        second = make_client(settings)
        row = _row_when(second, job["id"], lambda row: row.webhook_state != "pending")
        assert (row.webhook_state, row.webhook_attempts, receiver.attempts) == ("delivered", 2, 2)
        (delivered,) = receiver.bodies
        assert delivered["id"] == job["id"] and delivered["task_status"] == "SUCCESS"
