"""Async jobs outlive a server killed with SIGKILL: after a restart every job finishes or fails, and
webhook deliveries cut short are finished."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cogserve.storage import MetadataStore
from cogserve.storage.jobs import JobRow, JobStore
from tests.e2e.conftest import start_server, stop_server
from tests.helpers import WebhookReceiver, png_size

# Servers started, killed and restarted, jobs with 12 hd steps: ~30-110 s per test.
pytestmark = pytest.mark.slow

SUBMIT = "/api/paas/v4/async/images/generations"
ENV = {
    "COGSERVE_JOBS__LEASE_S": "2",
    "COGSERVE_MODEL__HD_STEPS": "12",  # long enough to be killed mid-generation
    "COGSERVE_SCHEDULER__MAX_BATCH_SIZE": "1",
}


def result(url: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/paas/v4/async-result/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_jobs_in_flight_at_sigkill_are_resumed_after_restart(tmp_path: Path, models_dir: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_server(data_dir, models_dir, env=ENV)
    try:
        ids = []
        for index in range(3):
            body = {
                "model": "cogview-4",
                "prompt": f"lighthouse number {index}",
                "size": "1024x1024",
                "quality": "hd",
                "seed": index,
            }
            response = httpx.post(f"{first.url}{SUBMIT}", json=body, timeout=10)
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
        deadline = time.monotonic() + 60
        while result(first.url, ids[0])["progress"] == 0:
            assert time.monotonic() < deadline, "the first job never started"
            time.sleep(0.05)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    finally:
        stop_server(first.process)
    unfinished = [job_id for job_id in ids if result_offline(data_dir, job_id) in ("queued", "running")]
    assert unfinished, "every job finished before the kill; nothing was tested"

    second = start_server(data_dir, models_dir, env=ENV)
    try:
        deadline = time.monotonic() + 120
        final = {}
        while len(final) < len(ids):
            assert time.monotonic() < deadline, f"jobs still PROCESSING: {set(ids) - set(final)}"
            for job_id in ids:
                body = result(second.url, job_id)
                if body["task_status"] != "PROCESSING":
                    final[job_id] = body
            time.sleep(0.1)
        for body in final.values():
            assert body["task_status"] == "SUCCESS", body
            image = httpx.get(body["data"][0]["url"], timeout=10)
            assert png_size(image.content) == (1024, 1024)
    finally:
        stop_server(second.process)


def result_offline(data_dir: Path, job_id: str) -> str:
    """The job's status as the database has it, read with no server running."""
    return job_offline(data_dir, job_id).status


def job_offline(data_dir: Path, job_id: str) -> JobRow:
    """The job's row as the database has it (a fresh connection: what is committed)."""
    store = MetadataStore(f"sqlite:///{(data_dir / 'cogserve.db').resolve()}")
    try:
        row = JobStore(store.engine).get(job_id)
    finally:
        store.close()
    assert row is not None
    return row


def test_a_webhook_being_retried_at_sigkill_is_delivered_after_restart(
    tmp_path: Path, models_dir: Path
) -> None:
    data_dir = tmp_path / "data"
    env = {
        "COGSERVE_JOBS__LEASE_S": "2",
        "COGSERVE_JOBS__WEBHOOK_ALLOW": "127.0.0.1",
        "COGSERVE_JOBS__WEBHOOK_BACKOFF_S": "60",  # the killed process would wait a minute to retry
    }
    with WebhookReceiver(failures=1) as receiver:
        first = start_server(data_dir, models_dir, env=env)
        try:
            body = {"model": "cogview-4", "prompt": "a kite", "size": "512x512", "webhook_url": receiver.url}
            response = httpx.post(f"{first.url}{SUBMIT}", json=body, timeout=10)
            assert response.status_code == 200, response.text
            job_id = response.json()["id"]
            deadline = time.monotonic() + 60
            while job_offline(data_dir, job_id).webhook_attempts < 1:
                assert time.monotonic() < deadline, "the first delivery never failed"
                time.sleep(0.05)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
        finally:
            stop_server(first.process)
        assert job_offline(data_dir, job_id).webhook_state == "pending"

        second = start_server(data_dir, models_dir, env=env)
        try:
            deadline = time.monotonic() + 60
            while (row := job_offline(data_dir, job_id)).webhook_state == "pending":
                assert time.monotonic() < deadline, "the delivery was never resumed"
                time.sleep(0.1)
            assert (row.webhook_state, row.webhook_attempts, receiver.attempts) == ("delivered", 2, 2)
            (delivered,) = receiver.bodies
            # The result as polled, links included: they name the address the job was submitted to.
            polled = result(second.url, job_id)

            def unlinked(body: dict[str, Any]) -> dict[str, Any]:
                return {k: v for k, v in body.items() if k not in ("data", "image_result")}

            assert delivered["task_status"] == "SUCCESS" and unlinked(delivered) == unlinked(polled)
            assert delivered["data"][0]["url"] == polled["data"][0]["url"].replace(second.url, first.url)
        finally:
            stop_server(second.process)
