"""Start-up says what matters in a few lines: the absolute data dir, the database, the auth mode, and
once ready the model, device, dtype and address."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cogserve.settings import Settings


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("cogserve.api")]


def test_start_up_names_data_dir_auth_model_and_address(
    make_client: Callable[..., TestClient],
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)
    settings = make_settings(storage={"data_dir": Path("relative-data")}, server={"port": 8123})
    make_client(settings)
    lines = _lines(caplog)
    data_dir = (tmp_path / "relative-data").resolve()
    assert any(f"data dir {data_dir};" in line and "metadata " in line for line in lines), lines
    assert any(line.startswith("AUTH IS OFF") for line in lines)
    ready = next(line for line in lines if line.startswith("ready: "))
    assert "cogview4-tiny-v1 on cpu (float32)" in ready and "http://127.0.0.1:8123" in ready
    assert len(lines) <= 5, lines


def test_start_up_says_when_keys_are_required(
    make_client: Callable[..., TestClient],
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    make_client(make_settings(auth={"require_auth": True}))
    assert "auth: API keys required (--require-auth)" in _lines(caplog)
