"""The cogserve command: generate in-process, gc, and start-up errors a user can act on."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, update

from cogserve.storage import ImageRow
from tests.e2e.conftest import COGSERVE, cli_env, start_server, stop_server
from tests.helpers import png_size

# Every test runs the cogserve command as a subprocess (torch and the pipeline imported each time).
pytestmark = pytest.mark.slow


def run(
    models_dir: Path, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COGSERVE, *args],
        env=cli_env(models_dir, **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_writes_a_png_and_the_seed_repeats(tmp_path: Path, models_dir: Path) -> None:
    outputs = [tmp_path / "a.png", tmp_path / "b.png"]
    for out in outputs:
        result = run(
            models_dir,
            "generate",
            "一只可爱的小猫咪",
            "--size",
            "768x512",
            "--seed",
            "42",
            "--quality",
            "hd",
            "-o",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
        )
        assert result.returncode == 0, result.stderr
        assert f"wrote {out}" in result.stdout and "seed 42" in result.stdout
        assert "3/3" in result.stdout + result.stderr  # the progress bar reached the last hd step
    assert png_size(outputs[0].read_bytes()) == (768, 512)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


def test_generate_default_output_name_and_bad_size(tmp_path: Path, models_dir: Path) -> None:
    result = run(models_dir, "generate", "a cat", "--size", "512x512", "--seed", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert png_size((tmp_path / "cogserve-5.png").read_bytes()) == (512, 512)
    bad = run(models_dir, "generate", "a cat", "--size", "500x500", cwd=tmp_path)
    assert bad.returncode == 2
    assert "invalid size" in bad.stderr and "between 512 and 2048" in bad.stderr
    assert not (tmp_path / "cogserve-None.png").exists() and len(list(tmp_path.glob("*.png"))) == 1


def test_serve_refuses_impossible_settings_clearly(tmp_path: Path, models_dir: Path) -> None:
    fp16 = run(models_dir, "serve", "--dtype", "fp16", "--data-dir", str(tmp_path))
    assert fp16.returncode == 2 and "overflows in float16" in fp16.stderr
    missing = run(models_dir, "serve", "--model-path", str(tmp_path), "--data-dir", str(tmp_path))
    assert missing.returncode == 2 and "model_index.json" in missing.stderr
    uncached = run(
        models_dir,
        "serve",
        "--model-path",
        "zai-org/CogView4-6B",
        "--data-dir",
        str(tmp_path),
        HF_HUB_CACHE=str(tmp_path / "empty-hf-cache"),
    )
    assert uncached.returncode == 2 and "--allow-download" in uncached.stderr


def test_serve_refuses_modes_this_device_cannot_run(tmp_path: Path, models_dir: Path) -> None:
    policy = tmp_path / "bad-policy.toml"
    policy.write_text('[categories.x]\nlevel = 7\nterms = ["y"]\n', encoding="utf-8")
    refusals = {
        ("--offload", "model"): "Use --offload none on a CPU",
        ("--text-encoder-quant", "nf4"): "needs CUDA; use int8",
        ("--step-cache", "fbc:1.5"): "0 < threshold < 1",
        ("--warmup-sizes", "520x520"): "divisible by 16",
        ("--moderation-policy", str(policy)): "level",
    }
    for flags, message in refusals.items():
        result = run(models_dir, "serve", *flags, "--data-dir", str(tmp_path), "--device", "cpu")
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr)


def test_server_start_gc_and_graceful_stop(tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    started = time.monotonic()
    server = start_server(data, models_dir)
    try:
        assert time.monotonic() - started < 120
        assert "RANDOM WEIGHTS" in server.log.read_text()
        urls = [
            httpx.post(
                f"{server.url}/api/paas/v4/images/generations",
                json={"model": "cogview-4", "prompt": f"cat {i}", "size": "512x512"},
                timeout=60,
            ).json()["data"][0]["url"]
            for i in range(2)
        ]
    finally:
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports it.
        assert stop_server(server.process) in (0, -15)
    assert "Application shutdown complete" in server.log.read_text()

    expired_id = urls[0].rsplit("/", 1)[1].removesuffix(".png")
    engine = create_engine(f"sqlite:///{data / 'cogserve.db'}")
    with engine.begin() as connection:
        connection.execute(
            update(ImageRow).where(ImageRow.id == expired_id).values(expires_at=time.time() - 5)
        )
    engine.dispose()

    result = run(models_dir, "gc", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert "deleted 1 expired images" in result.stdout
    remaining = sorted(p.stem for p in data.glob("images/*/*.png"))
    assert remaining == [urls[1].rsplit("/", 1)[1].removesuffix(".png")]
    assert os.path.exists(data / "cogserve.db")
