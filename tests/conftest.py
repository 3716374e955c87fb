"""Shared fixtures: one built-in tiny model per session, settings in temp dirs, apps and clients."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cogserve.api import create_app
from cogserve.engine import Engine, create_engine
from cogserve.engine.builtin import ensure_builtin_model
from cogserve.settings import Settings

# Few steps keep the tiny model quick; the code path is the same as with 20 or 50.
TEST_STEPS = {"standard_steps": 2, "hd_steps": 3}

# One intra-op thread for the in-process pipeline. The tiny model's ops are too small to gain from a
# second one, and on a 2-core machine with anything else running (another test process, a training
# job) the two threads spin against it: measured 0.6 s a 512x512 generation on one thread, 1.7-2.5 s
# on two. Servers the tests start as subprocesses keep torch's default, as in production.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_cogserve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their own Settings; a developer's COGSERVE_* variables must not leak in."""
    import os

    for key in list(os.environ):
        if key.startswith("COGSERVE_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    ensure_builtin_model(path)
    return path


@pytest.fixture
def make_settings(tmp_path: Path, models_dir: Path) -> Callable[..., Settings]:
    def make(**areas: dict[str, Any]) -> Settings:
        values: dict[str, Any] = {
            "storage": {"data_dir": tmp_path / "data"},
            "model": {"builtin_dir": models_dir, "builtin": "tiny-random", "warmup": False, **TEST_STEPS},
        }
        for area, overrides in areas.items():
            values[area] = {**values.get(area, {}), **overrides}
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def shared_engine(models_dir: Path) -> Engine:
    """One loaded tiny pipeline for the whole session (loading is idempotent)."""
    settings = Settings(model={"builtin_dir": models_dir, "builtin": "tiny-random"})
    engine = create_engine(settings)
    engine.load()
    return engine


def wait_ready(app: FastAPI, timeout: float = 60.0) -> None:
    service = app.state.cogserve.service
    deadline = time.monotonic() + timeout
    while not service.ready:
        if service.load_error:
            raise AssertionError(service.load_error)
        if time.monotonic() > deadline:
            raise AssertionError("model did not become ready")
        time.sleep(0.02)


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings], shared_engine: Engine
) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(
        settings: Settings | None = None, engine: Engine | None = None, ready: bool = True
    ) -> TestClient:
        app = create_app(settings or make_settings(), engine=engine or shared_engine)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        if ready:
            wait_ready(app)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
