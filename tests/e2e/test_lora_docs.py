"""docs/lora.md's commands, and what the page promises beyond running (test_docs_examples.py runs
each example): `cogserve loras list` shows the adapters `make-test` made, and a key made by
`cogserve keys create --loras` may use only those adapters."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import COGSERVE, Server, cli_env, start_server, stop_server

pytest.importorskip("peft")
pytestmark = pytest.mark.slow

DOC = Path(__file__).parents[2] / "docs" / "lora.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def block_with(language: str, needle: str) -> str:
    return next(block for block in blocks(language) if needle in block)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lora-docs")


@pytest.fixture(scope="module")
def lora_server(workdir: Path, models_dir: Path) -> Iterator[Server]:
    make_test = [line for line in block_with("sh", "make-test").splitlines() if line.startswith("cogserve")]
    assert len(make_test) == 2
    for line in make_test:
        command = shlex.split(line.split("#")[0])
        done = subprocess.run(
            [COGSERVE, *command[1:]], cwd=workdir, env=cli_env(models_dir), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    serve = shlex.split(block_with("sh", "cogserve serve").strip())
    assert serve[:2] == ["cogserve", "serve"]
    args = [arg if arg != "./loras" else str(workdir / "loras") for arg in serve[2:]]
    server = start_server(workdir / "data", models_dir, *args, timeout=180)
    yield server
    stop_server(server.process)


def test_loras_list_shows_the_made_adapters(lora_server: Server, workdir: Path, models_dir: Path) -> None:
    done = subprocess.run(
        [COGSERVE, "loras", "list", "--lora-dir", "./loras", "--builtin", "shapes"],
        cwd=workdir,
        env=cli_env(models_dir),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "rank", "alpha", "size"]
    ink = next(line for line in lines if line.startswith("ink "))
    assert ink.split()[1:3] == ["8", "4"] and "attn1.to_q" in ink


def test_a_key_limited_by_keys_create_loras_is_refused_other_adapters(
    lora_server: Server, models_dir: Path, workdir: Path
) -> None:
    command = shlex.split(block_with("sh", "keys create").strip())
    done = subprocess.run(
        [COGSERVE, *command[1:], "--data-dir", str(lora_server.data_dir)],
        env=cli_env(models_dir),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    listed = subprocess.run(
        [COGSERVE, "keys", "list", "--data-dir", str(lora_server.data_dir)],
        env=cli_env(models_dir),
        capture_output=True,
        text=True,
    )
    assert "(loras: ink, wash)" in listed.stdout, listed.stdout + listed.stderr
    shutil.copytree(workdir / "loras" / "ink", workdir / "loras" / "oil")  # served at once, not for this key
    body = {"model": "cogview-4", "prompt": "a red circle", "size": "512x512"}
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{lora_server.url}/api/paas/v4/images/generations"
    refused = httpx.post(url, json={**body, "loras": [{"name": "oil"}]}, headers=headers, timeout=60)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "1220"
    allowed = httpx.post(url, json={**body, "loras": [{"name": "wash"}]}, headers=headers, timeout=60)
    assert allowed.status_code == 200, allowed.text
