"""A real ``cogserve serve`` subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

COGSERVE = str(Path(sys.executable).parent / "cogserve")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(models_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGSERVE_")}
    env.update(
        COGSERVE_MODEL__BUILTIN_DIR=str(models_dir),
        COGSERVE_MODEL__BUILTIN="tiny-random",
        COGSERVE_MODEL__STANDARD_STEPS="2",
        COGSERVE_MODEL__HD_STEPS="3",
    )
    env.update(extra)
    return env


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path


def start_server(
    data_dir: Path, models_dir: Path, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    log = data_dir.parent / f"server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [COGSERVE, "serve", "--port", str(port), "--data-dir", str(data_dir), *args],
            env=cli_env(models_dir, **(env or {})),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Server(url, data_dir, process, log)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise AssertionError(f"server not ready in {timeout} s:\n{log.read_text()}")


def stop_server(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """One open server (no keys) for every module that just needs one: starting one costs seconds."""
    running = start_server(tmp_path_factory.mktemp("server") / "data", models_dir)
    yield running
    stop_server(running.process)
