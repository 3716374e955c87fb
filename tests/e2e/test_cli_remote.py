"""``cogserve generate --server``: the CLI driving a live server's async API, as a user would run it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cogserve.errors import ContentBlocked
from tests.e2e.conftest import COGSERVE, Server, cli_env, free_port, start_server, stop_server
from tests.e2e.test_cli import run
from tests.helpers import png_size

# A live server for the module and the cogserve command as a subprocess in every test.
pytestmark = pytest.mark.slow

# hd is made slow on this server (200 tiny steps at 1024x1024 take minutes on a CPU), so a job can
# be caught running; standard stays at the fast 2 steps of cli_env.
SLOW = ["--quality", "hd", "--size", "1024x1024"]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[tuple[Server, str]]:
    data_dir = tmp_path_factory.mktemp("remote") / "data"
    created = run(
        models_dir, "keys", "create", "--name", "cli-remote", "--create", "--data-dir", str(data_dir)
    )
    assert created.returncode == 0, created.stderr
    server = start_server(data_dir, models_dir, env={"COGSERVE_MODEL__HD_STEPS": "200"})
    yield server, created.stdout.strip()
    stop_server(server.process)


def _argv(url: str, *args: str) -> list[str]:
    return [COGSERVE, "generate", *args, "--server", url, "--poll-interval", "0.1"]


def _env(models_dir: Path, **env: str) -> dict[str, str]:
    environ = cli_env(models_dir, **env)
    if "ZHIPUAI_API_KEY" not in env:
        environ.pop("ZHIPUAI_API_KEY", None)  # a developer's own key must not turn a test's auth on
    return environ


def remote(
    models_dir: Path, url: str, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(url, *args),
        env=_env(models_dir, **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _changed(a: Path, b: Path) -> float:
    """The fraction of clearly different pixel values between two PNGs of one size."""
    with Image.open(a) as first, Image.open(b) as second:
        diff = np.abs(np.asarray(first, dtype=int) - np.asarray(second, dtype=int))
    return float((diff > 8).mean())


def _running(server: Server) -> int:
    return int(httpx.get(f"{server.url}/readyz", timeout=10).json()["running"])


def _wait_running(server: Server, at_least: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _running(server) < at_least:
        assert time.monotonic() < deadline, "the job never started running"
        time.sleep(0.05)


def _wait_idle(server: Server, timeout: float = 20.0) -> None:
    """Cancelling must stop the work on the server, not just the client's waiting."""
    deadline = time.monotonic() + timeout
    while _running(server) > 0:
        assert time.monotonic() < deadline, "the cancelled job kept running on the server"
        time.sleep(0.1)


def test_writes_the_png_and_the_same_seed_repeats(
    secured: tuple[Server, str], models_dir: Path, tmp_path: Path
) -> None:
    server, key = secured
    first = tmp_path / "out" / "a.png"
    by_flag = remote(
        models_dir, server.url, "一只可爱的小猫咪", "--size", "512x512", "--seed", "42", "-o", str(first),
        "--api-key", key,
    )  # fmt: skip
    assert by_flag.returncode == 0, by_flag.stderr
    lines = by_flag.stdout.strip().splitlines()
    assert lines[-1].startswith(f"wrote {first} (512x512, seed 42, task ")
    assert any(line.startswith("content_filter: user level 3") for line in lines)
    assert "100%" in by_flag.stderr  # the progress bar (stderr, so stdout stays parseable)
    assert png_size(first.read_bytes()) == (512, 512)
    assert not list(first.parent.glob(".*"))  # no temp file left behind

    # The key from the environment, the BigModel base URL as given to the SDKs, the default name.
    by_env = remote(
        models_dir, f"{server.url}/api/paas/v4/", "一只可爱的小猫咪", "--size", "512x512", "--seed", "42",
        cwd=tmp_path, COGSERVE_API_KEY=key,
    )  # fmt: skip
    assert by_env.returncode == 0, by_env.stderr
    second = tmp_path / "cogserve-42.png"
    assert by_env.stdout.strip().splitlines()[-1].startswith(f"wrote {second.name} ")
    # Same seed, same image: not the same bytes, since the served PNG's invisible watermark and
    # metadata carry each image's own id, but only faint traces on a few pixels differ.
    assert _changed(first, second) < 0.01
    other = remote(
        models_dir, server.url, "一只可爱的小猫咪", "--size", "512x512", "--seed", "43", cwd=tmp_path,
        COGSERVE_API_KEY=key,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert _changed(first, tmp_path / "cogserve-43.png") > 0.3


def test_moderation_refusal_is_reported_with_its_code(
    secured: tuple[Server, str], models_dir: Path, tmp_path: Path
) -> None:
    server, key = secured
    out = tmp_path / "blocked.png"
    result = remote(models_dir, server.url, "how to make a pipe bomb", "-o", str(out), ZHIPUAI_API_KEY=key)
    assert result.returncode == 1
    assert f"error 1301: {ContentBlocked.SEED_MESSAGE}" in result.stderr
    assert not out.exists() and "wrote" not in result.stdout


def test_missing_key_and_bad_request_get_the_servers_message(
    secured: tuple[Server, str], models_dir: Path, tmp_path: Path
) -> None:
    server, key = secured
    keyless = remote(models_dir, server.url, "a cat", "-o", str(tmp_path / "x.png"))
    assert keyless.returncode == 1
    assert "error 1001: no Authorization header" in keyless.stderr
    bad_size = remote(models_dir, server.url, "a cat", "--size", "500x500", "--api-key", key)
    assert bad_size.returncode == 2  # bad input, as in-process
    assert "error 1214:" in bad_size.stderr and "between 512 and 2048" in bad_size.stderr
    assert not list(tmp_path.glob("*.png"))


def test_a_dead_server_is_a_clear_error(models_dir: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = remote(models_dir, url, "a cat", "--timeout", "10", cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot connect to the cogserve server at {url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_timeout_cancels_the_job(secured: tuple[Server, str], models_dir: Path, tmp_path: Path) -> None:
    server, key = secured
    started = time.monotonic()
    result = remote(models_dir, server.url, "a slow cat", *SLOW, "--timeout", "2", "--api-key", key)
    assert result.returncode == 1
    assert "did not finish within 2 s; it was cancelled" in result.stderr
    assert time.monotonic() - started < 30
    _wait_idle(server)


def test_ctrl_c_cancels_the_job(secured: tuple[Server, str], models_dir: Path, tmp_path: Path) -> None:
    server, key = secured
    process = subprocess.Popen(
        _argv(server.url, "a slow cat", *SLOW, "-o", str(tmp_path / "never.png")),
        # faulthandler: should the CLI hang after Ctrl-C, SIGABRT makes it print every thread's stack
        env=_env(models_dir, COGSERVE_API_KEY=key, PYTHONFAULTHANDLER="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a shell's background job (``nohup … &``, as CI may run the suite)
        # starts with SIGINT ignored, and Python keeps an inherited ignore, so it never raised.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_running(server, 1)
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, stacks = process.communicate(timeout=30)
            pytest.fail(f"the CLI did not exit within 30 s of Ctrl-C; where it was:\n{stacks[-6000:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "cancelled"
    assert not (tmp_path / "never.png").exists()
    _wait_idle(server)
