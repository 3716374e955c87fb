"""Health, readiness, request ids, logs, and failures that must not leak a traceback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import pytest
from fastapi.testclient import TestClient

from cogserve.api import create_app
from cogserve.engine import BatchItem, Engine, GenerationOutput
from cogserve.errors import ConfigError
from tests.conftest import wait_ready
from tests.helpers import IMAGES, DelegatingEngine, generate


class WrappedEngine(DelegatingEngine):
    """The real engine with a fault (or a pause) injected in front of it."""

    def __init__(
        self,
        inner: Engine,
        *,
        fail_generate: Exception | None = None,
        hold_load: threading.Event | None = None,
        fail_load: Exception | None = None,
    ) -> None:
        super().__init__(inner)
        self.fail_generate, self.hold_load, self.fail_load = fail_generate, hold_load, fail_load

    def load(self) -> None:
        if self.hold_load is not None:
            self.hold_load.wait(30)
        if self.fail_load is not None:
            raise self.fail_load
        self.inner.load()

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        if self.fail_generate is not None:
            raise self.fail_generate
        return self.inner.generate_batch(items)


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["builtin"] is True and ready.json()["device"] == "cpu"


def test_not_ready_until_loaded_and_warmed_up(
    make_client: Callable[..., TestClient], make_settings, shared_engine: Engine
) -> None:
    gate = threading.Event()
    client = make_client(
        make_settings(model={"warmup": True}),
        engine=WrappedEngine(shared_engine, hold_load=gate),
        ready=False,
    )
    assert client.get("/healthz").status_code == 200
    readyz = client.get("/readyz")
    assert readyz.status_code == 503 and readyz.json()["error"]["code"] == "1305"
    busy = generate(client)
    assert busy.status_code == 503
    assert busy.json()["error"]["code"] == "1305"
    assert busy.headers["retry-after"] == "5"
    gate.set()
    wait_ready(client.app)  # type: ignore[arg-type]
    assert client.get("/readyz").status_code == 200
    assert generate(client).status_code == 200


def test_a_model_that_fails_to_load_is_reported(make_settings, shared_engine: Engine) -> None:
    told: list[str] = []
    engine = WrappedEngine(shared_engine, fail_load=ConfigError("model folder has no model_index.json"))
    app = create_app(make_settings(), engine=engine, on_fatal=told.append)
    with TestClient(app) as client:
        for _ in range(200):
            if told:
                break
            threading.Event().wait(0.01)
        assert told and "model_index.json" in told[0]
        readyz = client.get("/readyz")
        assert readyz.status_code == 503
        assert "model_index.json" in readyz.json()["error"]["message"]


def test_pipeline_failure_is_500_1230_and_the_server_keeps_serving(
    make_client: Callable[..., TestClient], shared_engine: Engine
) -> None:
    faulty = WrappedEngine(shared_engine)
    client = make_client(engine=faulty)
    from cogserve.errors import GenerationFailed

    faulty.fail_generate = GenerationFailed("image generation failed: RuntimeError: boom")
    response = generate(client)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "1230"
    assert response.headers["x-should-retry"] == "false"
    faulty.fail_generate = None
    assert generate(client).status_code == 200


def test_real_pipeline_exception_is_translated(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import CogView4Pipeline

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(CogView4Pipeline, "__call__", explode)
    response = generate(client)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "1230"
    assert "device-side assert" in response.json()["error"]["message"]


def test_unexpected_error_is_500_with_request_id_and_no_traceback(
    make_client: Callable[..., TestClient], shared_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(engine=WrappedEngine(shared_engine, fail_generate=ZeroDivisionError("secret")))
    with caplog.at_level(logging.ERROR):
        response = generate(client, request_id="trace-me-1")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "500"
    assert "trace-me-1" in error["message"]
    assert "Traceback" not in response.text and "ZeroDivisionError" not in response.text
    assert response.headers["x-request-id"] == "trace-me-1"
    assert any("trace-me-1" in r.getMessage() and r.exc_info for r in caplog.records)


def test_every_response_has_a_request_id_and_one_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="cogserve.access"):
        responses = [
            client.get("/healthz"),
            client.get("/nope"),
            client.post(IMAGES, json={}),
            client.delete(IMAGES),
        ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "cogserve.access"]
    assert len(lines) == 4
    for line, request_id, response in zip(lines, ids, responses, strict=True):
        assert request_id in line and str(response.status_code) in line


def test_unknown_route_and_wrong_method_use_the_envelope(client: TestClient) -> None:
    missing = client.post("/api/paas/v4/images/generation", json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "1222"
    wrong = client.get(IMAGES)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert set(wrong.json()) == {"error"} and "detail" not in wrong.text


def test_openapi_documents_the_request_body_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"][IMAGES]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "prompt"} <= set(schema["required"])
    assert {"quality", "size", "user_id", "request_id", "seed", "n"} <= set(schema["properties"])
    assert all(prop.get("description") for prop in schema["properties"].values())
    assert {"200", "400", "500", "503"} <= set(operation["responses"])


def test_the_playground_says_the_tiny_random_model_draws_noise(client: TestClient) -> None:
    config = client.get("/playground/config.json").json()
    assert "random" in config["model_note"] and "--builtin shapes" in config["model_note"]
    assert config["example_prompts"] == []  # nothing it draws is worth suggesting
